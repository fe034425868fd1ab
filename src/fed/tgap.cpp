#include "fed/tgap.h"

#include <algorithm>
#include <cstring>

#include "tensor/rng.h"
#include "train/step.h"

namespace pcmoe::fed {

void sample_blocks(const float* u, size_t n, int count, uint64_t seed, BlockSet& out) {
  const size_t nb = n_blocks(n, out.B);
  Rng rng(splitmix64(seed ^ 0xb10c5ULL));
  std::vector<float> row(out.B);
  for (int i = 0; i < count; ++i) {
    if (normalised_block(u, n, out.B, rng.next_u64() % nb, row.data()) > 0)
      out.x.insert(out.x.end(), row.begin(), row.end());
  }
}

double reconstruction_loss(const BlockAutoencoder& ae, const BlockSet& set) {
  return set.rows() ? ae.loss(set.x.data(), (int)set.rows()) : 0.0;
}

void train_autoencoder(BlockAutoencoder& ae, const BlockSet& set, int epochs, int batch, float lr, uint64_t seed) {
  const size_t rows = set.rows(), B = set.B;
  if (rows == 0) return;
  std::vector<size_t> order(rows);
  std::vector<float> x, grads(ae.numel());
  Rng rng(splitmix64(seed ^ 0x7a6a9ULL));
  for (int ep = 0; ep < epochs; ++ep) {
    for (size_t i = 0; i < rows; ++i) order[i] = i;
    for (size_t i = rows; i > 1; --i) std::swap(order[i - 1], order[rng.next_u64() % i]);
    for (size_t b0 = 0; b0 < rows; b0 += batch) {
      const size_t M = std::min((size_t)batch, rows - b0);
      x.resize(M * B);
      for (size_t r = 0; r < M; ++r) std::memcpy(x.data() + r * B, set.x.data() + order[b0 + r] * B, B * sizeof(float));
      ae.loss_and_grad(x.data(), (int)M, grads.data());
      ae.adam_step(grads.data(), lr);
    }
  }
}

size_t trainable_numel(const ParamSet& p) {
  size_t n = 0;
  for (const ParamTensor& t : p.tensors()) n += t.numel;
  return n;
}

void gather(const ParamSet& p, float* out) {
  for (const ParamTensor& t : p.tensors()) {
    std::memcpy(out, p.values() + t.offset, t.numel * sizeof(float));
    out += t.numel;
  }
}

void scatter(const float* in, ParamSet& p) {
  for (const ParamTensor& t : p.tensors()) {
    std::memcpy(p.values() + t.offset, in, t.numel * sizeof(float));
    in += t.numel;
  }
}

BlockSet record_updates(LocalModel& m, const TrainConfig& tc, int steps, const BatchFn& data, int blocks_per_step,
                        int B, uint64_t seed) {
  BlockSet set{B, {}};
  const size_t n = trainable_numel(m.params);
  std::vector<float> before(n), after(n);
  std::vector<int32_t> windows((size_t)tc.grad_accum * tc.batch_size * (m.model.config().seq_len + 1));
  for (int s = 0; s < steps; ++s) {
    gather(m.params, before.data());
    data(s, windows.data());
    accumulate_gradients(m.model, m.params, windows.data(), tc.batch_size, tc.grad_accum);
    apply_update(m.params, m.opt, tc, s);
    gather(m.params, after.data());
    for (size_t i = 0; i < n; ++i) after[i] -= before[i];
    sample_blocks(after.data(), n, blocks_per_step, seed + 1000003ULL * (uint64_t)s, set);
  }
  return set;
}

}  // namespace pcmoe::fed
