// The tiny model and short run the unit tests train; each test changes what it checks. Vocab
// 64, d_model 32, 2 layers of 4 heads (2 KV heads), 6 experts of 24 hidden units (top-2) in every
// layer, dense SwiGLU 40 where a layer is dense, 16 tokens per sequence; batches of 4, 10 steps,
// 1 warm-up step, seed 5 (the rest as TrainConfig's defaults).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "tensor/rng.h"
#include "train/train_config.h"

namespace pcmoe::tiny {

inline ModelConfig model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.d_model = 32;
  m.n_layers = 2;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.d_ff = 24;
  m.d_ff_dense = 40;
  m.n_experts = 6;
  m.top_k = 2;
  m.moe_every = 1;
  m.seq_len = 16;
  return m;
}

inline TrainConfig train() {
  TrainConfig t;
  t.batch_size = 4;
  t.steps = 10;
  t.warmup = 1;
  t.seed = 5;
  return t;
}

// One turn's windows, [grad_accum * batch_size, seq_len + 1], of uniform random tokens.
inline std::vector<int32_t> windows(const ModelConfig& m, const TrainConfig& t, uint64_t seed) {
  std::vector<int32_t> w((size_t)t.grad_accum * t.batch_size * (m.seq_len + 1));
  Rng rng(seed);
  for (auto& x : w) x = (int32_t)(rng.next_u64() % m.vocab_size);
  return w;
}

}  // namespace pcmoe::tiny
