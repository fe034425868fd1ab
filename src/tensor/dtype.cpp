#include "tensor/dtype.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

namespace pcmoe {

namespace {
uint32_t bits_of(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float float_of(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
// Drops the low `shift` bits of q, rounding to nearest with ties to even.
uint32_t round_shift(uint32_t q, int shift) {
  const uint32_t kept = q >> shift, rest = q & ((1u << shift) - 1), half = 1u << (shift - 1);
  return kept + (rest > half || (rest == half && (kept & 1)));
}
// bf16 is the top half of fp32. Below NaN the magnitude plus the rounding bias stays under the
// sign bit, so one add rounds to nearest even (a carry may reach the exponent, up to inf), and
// the branch-free form vectorises for whole rows.
inline uint16_t bf16_bits(uint32_t x) {
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const bool nan = (x & 0x7fffffffu) > 0x7f800000u;
  return uint16_t(nan ? ((x >> 16) | 0x0040u) : rounded);  // NaN: keep it a quiet NaN
}

void f32_from_f32(const float* src, size_t n, void* dst) {
  if (n) std::memcpy(dst, src, n * 4);
}
void f32_to_f32(const void* src, size_t n, float* dst) {
  if (n) std::memcpy(dst, src, n * 4);
}
void bf16_from_f32(const float* src, size_t n, void* dst) {
  uint16_t* out = static_cast<uint16_t*>(dst);  // little-endian hosts (as Writer)
  for (size_t i = 0; i < n; ++i) out[i] = bf16_bits(bits_of(src[i]));
}
void bf16_to_f32(const void* src, size_t n, float* dst) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = float_of(uint32_t(in[i]) << 16);
}
void fp16_from_f32(const float* src, size_t n, void* dst) {
  uint16_t* out = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) out[i] = float_to_fp16(src[i]);
}
void fp16_to_f32(const void* src, size_t n, float* dst) {
  const uint16_t* in = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_float(in[i]);
}

const DtypeTraits kTraits[] = {
    {Dtype::kF32, "fp32", 4, 0, f32_from_f32, f32_to_f32},
    {Dtype::kBF16, "bf16", 2, 0x7f80, bf16_from_f32, bf16_to_f32},
    {Dtype::kF16, "fp16", 2, 0x7c00, fp16_from_f32, fp16_to_f32},
};
}  // namespace

const DtypeTraits& dtype_traits(Dtype d) {
  const size_t i = static_cast<size_t>(d);
  if (i >= std::size(kTraits)) throw std::logic_error("unknown dtype");
  return kTraits[i];
}

Dtype parse_dtype(const std::string& name, const std::string& key) {
  for (const DtypeTraits& t : kTraits)
    if (name == t.name) return t.dtype;
  throw std::runtime_error("config key '" + key + "': unknown dtype '" + name + "' (expected fp32, bf16 or fp16)");
}

uint16_t float_to_bf16(float f) { return bf16_bits(bits_of(f)); }

float bf16_to_float(uint16_t h) { return float_of(uint32_t(h) << 16); }

uint16_t float_to_fp16(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00 | uint16_t((a >> 13) & 0x3ff);  // NaN, quiet
  const int e = int(a >> 23);  // fp32 biased exponent; value = 1.m x 2^(e - 127) when e > 0
  if (e >= 143) return sign | 0x7c00;  // >= 2^16: inf (and inf itself)
  const uint32_t m24 = (a & 0x7fffff) | (e ? 0x800000u : 0);
  if (e >= 113) {
    // normal fp16: rebias the exponent (127 -> 15), 13 mantissa bits rounded off; a carry out of
    // the mantissa bumps the exponent, and past 0x7bff (65504) gives 0x7c00 (inf), as IEEE says.
    const uint32_t q = (uint32_t(e - 112) << 23) | (a & 0x7fffff);
    return sign | uint16_t(round_shift(q, 13));
  }
  // subnormal fp16 (or zero): the value in units of 2^-24 is m24 x 2^(e - 126)
  const int shift = 126 - e;  // >= 14
  if (shift > 24) return sign;  // below 2^-25: rounds to zero
  return sign | uint16_t(round_shift(m24, shift));  // may round up to 0x400, the least normal
}

float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) return std::copysign(float(m) * 0x1p-24f, sign ? -1.0f : 1.0f);  // exact: m < 2^10
  if (e == 31) return float_of(sign | 0x7f800000 | (m << 13));
  return float_of(sign | ((e + 112) << 23) | (m << 13));
}

void round_to_bf16(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = float_of(uint32_t(bf16_bits(bits_of(x[i]))) << 16);
}

}  // namespace pcmoe
