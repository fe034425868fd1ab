// The one random stream of privacy/: AES-256 in counter mode (OpenSSL), keyed by RAND_bytes, by
// SHA-256 of a secret and a stream id (a run's Poisson batches), or, for tests that must repeat,
// by SHA-256 of a fixed seed and a stream id. Normals come from the Box-Muller transform over
// 53-bit uniforms in double precision; noise from a secret key sums four of them (docs/privacy.md:
// float rounding must not single out the input).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace pcmoe {

class NoiseSource {
 public:
  // Keyed from the operating system's secure generator (the default for real runs).
  static NoiseSource secure();
  // Keyed by (seed, stream): the same pair gives the same noise (tests and reproductions only;
  // reports say when it was used).
  static NoiseSource seeded(uint64_t seed, uint64_t stream);
  // Keyed by (secret, stream): a secret drawn once from RAND_bytes gives streams a run can redraw
  // (the same step's batch in every mode) and nobody else can.
  static NoiseSource keyed(const std::array<unsigned char, 32>& secret, uint64_t stream);
  NoiseSource(NoiseSource&&) noexcept;
  NoiseSource& operator=(NoiseSource&&) noexcept;
  ~NoiseSource();

  // x[i] += std * N(0, 1) for i < n, in double, rounded once: hardened_normal() for secret keys,
  // normal() for seeded sources (so seeded runs draw what they drew before the hardening).
  void add_gaussian(float* x, size_t n, double std);
  double normal();  // one Box-Muller draw
  // (z1 + z2 + z3 + z4) / 2 of four normal() draws: still N(0, 1), with a smooth density and a
  // support twice as wide, so no output is reachable from one input and not from its neighbour.
  double hardened_normal();
  uint64_t next_u64();

 private:
  NoiseSource(const std::array<unsigned char, 32>& key, bool hardened);
  static NoiseSource hashed(const unsigned char* secret, size_t len, uint64_t stream, bool hardened);
  void refill();
  struct Cipher;
  std::unique_ptr<Cipher> cipher_;
  std::array<uint64_t, 512> block_{};
  size_t used_ = 512;
  bool hardened_ = true;
  bool has_spare_ = false;
  double spare_ = 0;
};

class ParamSet;
// Adds std * N(0, 1) to every gradient coordinate of every tensor of `params` (padding left
// alone), tensor by tensor in layout order.
void add_gaussian_noise(ParamSet& params, NoiseSource& src, double std);

}  // namespace pcmoe
