// Gaussian noise for DP-SGD from a cryptographically secure stream: AES-256 in counter mode
// (OpenSSL), keyed by RAND_bytes, or, for tests that must repeat, by SHA-256 of a fixed seed and
// a stream id. Normals come from the Box-Muller transform over 53-bit uniforms in double
// precision, so every sample is exact to float precision.
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
  NoiseSource(NoiseSource&&) noexcept;
  NoiseSource& operator=(NoiseSource&&) noexcept;
  ~NoiseSource();

  // x[i] += std * N(0, 1) for i < n.
  void add_gaussian(float* x, size_t n, double std);
  double normal();
  uint64_t next_u64();

 private:
  explicit NoiseSource(const std::array<unsigned char, 32>& key);
  void refill();
  struct Cipher;
  std::unique_ptr<Cipher> cipher_;
  std::array<uint64_t, 512> block_{};
  size_t used_ = 512;
  bool has_spare_ = false;
  double spare_ = 0;
};

class ParamSet;
// Adds std * N(0, 1) to every gradient coordinate of every tensor of `params` (padding left
// alone), tensor by tensor in layout order.
void add_gaussian_noise(ParamSet& params, NoiseSource& src, double std);

}  // namespace pcmoe
