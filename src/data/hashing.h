// Small hash and RNG primitives of our own, so that splits, samplers and cache keys do not depend
// on the standard library's (implementation-defined) engines and distributions.
#pragma once
#include <cstdint>
#include <string_view>

namespace pcmoe::data::detail {

// The splitmix64 finalizer: a bijective mix with good avalanche.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Maps a uniform 64-bit value to [0, bound) (multiply-high; bias is negligible for our bounds).
inline uint64_t below(uint64_t random, uint64_t bound) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(random) * bound) >> 64);
}

// splitmix64 generator.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(state_);
  }

 private:
  uint64_t state_;
};

// FNV-1a, 64 bits: a stable content hash for cache keys.
class Fnv1a64 {
 public:
  void update(std::string_view bytes) {
    for (unsigned char c : bytes) {
      state_ = (state_ ^ c) * 0x100000001b3ULL;
    }
  }
  // Length-prefixed, so that concatenations of different pieces hash differently.
  void update_field(std::string_view bytes) {
    update_u64(bytes.size());
    update(bytes);
  }
  void update_u64(uint64_t value) {
    for (int i = 0; i < 8; ++i) {  // little-endian bytes, whatever the host order
      state_ = (state_ ^ ((value >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
    }
  }
  uint64_t digest() const { return state_; }

 private:
  uint64_t state_ = 0xcbf29ce484222325ULL;
};

}  // namespace pcmoe::data::detail
