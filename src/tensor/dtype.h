// The one dtype table: every narrower float format pcmoe stores, sends or multiplies in, with
// its size, name and conversions to and from fp32 (ggml's type-traits idea). The wire
// (collab.wire_dtype) and the compute dtype (model.compute_dtype) both name their dtype here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pcmoe {

enum class Dtype : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2 };

// IEEE conversions, round to nearest, ties to even (torch's .to(torch.bfloat16 / float16)):
// NaN stays a (quiet) NaN, a value whose rounding exceeds the format's largest finite value
// becomes ±inf, fp16 subnormals are kept (no flush to zero).
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);
float fp16_to_float(uint16_t h);

struct DtypeTraits {
  Dtype dtype;
  const char* name;  // "fp32" | "bf16" | "fp16"
  size_t size;       // bytes per value
  uint16_t inf_bits; // 2-byte formats: the bits of +inf (magnitude), to tell overflow apart
  // n values from fp32 into dst (n * size bytes, little-endian), and back.
  void (*from_f32)(const float* src, size_t n, void* dst);
  void (*to_f32)(const void* src, size_t n, float* dst);
};
const DtypeTraits& dtype_traits(Dtype d);

inline const char* to_string(Dtype d) { return dtype_traits(d).name; }
// "fp32" | "bf16" | "fp16" -> the dtype; anything else throws std::runtime_error naming `key`
// (the config key) and the choices ("expected fp32, bf16 or fp16").
Dtype parse_dtype(const std::string& name, const std::string& key);

// x rounded to bf16 and back, in place (the bf16 GEMM's inputs, held in fp32).
void round_to_bf16(float* x, size_t n);

}  // namespace pcmoe
