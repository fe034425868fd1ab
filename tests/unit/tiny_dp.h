// The DP-SGD unit tests' set-up (test_dp.cpp, test_weights_dp.cpp): the tiny model on 8-token
// windows with both auxiliary losses on, no weight decay (a zero gradient then leaves a weight
// exactly where it is), a seeded privacy section whose clip sits below most units' norms, and
// streams of random documents.
#pragma once
#include <cstdint>
#include <vector>

#include "privacy/privacy_config.h"
#include "tensor/rng.h"
#include "tiny.h"

namespace pcmoe::tiny {

inline ModelConfig dp_model() {
  ModelConfig m = model();
  m.seq_len = 8;
  m.aux_loss_weight = 0.05f;
  m.z_loss_weight = 0.01f;
  return m;
}

inline TrainConfig dp_train() {
  TrainConfig t = train();
  t.weight_decay = 0;
  t.seed = 3;
  return t;
}

inline PrivacyConfig dp_config(double q = 0.5) {
  PrivacyConfig c;
  c.enabled = true;
  c.sampling_rate = q;
  c.noise_multiplier = 1.0;
  c.clip = 0.05;  // below most units' norms: clipping is active
  c.test_seed = 9;
  return c;
}

// `docs` documents, each BOS + `len` random tokens.
inline std::vector<int32_t> documents(int docs, int len, int32_t bos, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> s;
  for (int d = 0; d < docs; ++d) {
    s.push_back(bos);
    for (int i = 0; i < len; ++i) s.push_back(2 + (int32_t)(rng.next_u64() % 60));
  }
  return s;
}

}  // namespace pcmoe::tiny
