#include "privacy/sampling.h"

#include <openssl/rand.h>

#include <stdexcept>

#include "privacy/noise.h"
#include "tensor/rng.h"

namespace pcmoe {

namespace {

// Unit u joins when a 53-bit uniform in [0, 1) falls below q.
template <class Gen>
std::vector<int> bernoulli_units(Gen& gen, int n_units, double q) {
  std::vector<int> out;
  for (int u = 0; u < n_units; ++u)
    if ((gen.next_u64() >> 11) * 0x1.0p-53 < q) out.push_back(u);
  return out;
}

}  // namespace

PoissonSampler PoissonSampler::secure() {
  PoissonSampler s;
  if (RAND_bytes(s.secret_.data(), (int)s.secret_.size()) != 1)
    throw std::runtime_error("the operating system's secure random generator failed (RAND_bytes)");
  return s;
}

PoissonSampler PoissonSampler::seeded(uint64_t seed) {
  PoissonSampler s;
  s.seeded_ = true;
  s.seed_ = seed;
  return s;
}

std::vector<int> PoissonSampler::sample(int64_t step, int n_units, double q) const {
  if (seeded_) {
    Rng rng(splitmix64(seed_ ^ 0x706f6973736f6eULL) + (uint64_t)step * 0x9e3779b97f4a7c15ULL);
    return bernoulli_units(rng, n_units, q);
  }
  NoiseSource stream = NoiseSource::keyed(secret_, (uint64_t)step);
  return bernoulli_units(stream, n_units, q);
}

}  // namespace pcmoe
