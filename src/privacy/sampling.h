// The Poisson batches of DP-SGD: each unit joins a step's batch independently with probability q.
// The guarantee needs the batches secret: by default each step's draws come from the AES-256-CTR
// stream keyed by (a secret drawn once from RAND_bytes and never written, the step), so a run can
// redraw a step's batch (every collab mode trains on the same one) and nobody else can. Seeded
// (privacy.test_seed, tests only): the generator of (seed, step), as drawn before there was a
// secure path; whoever holds the seed recomputes every batch.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace pcmoe {

class PoissonSampler {
 public:
  static PoissonSampler secure();
  static PoissonSampler seeded(uint64_t seed);
  // The units of `step` in ascending order.
  std::vector<int> sample(int64_t step, int n_units, double q) const;
  bool is_seeded() const { return seeded_; }

 private:
  PoissonSampler() = default;
  bool seeded_ = false;
  uint64_t seed_ = 0;
  std::array<unsigned char, 32> secret_{};
};

}  // namespace pcmoe
