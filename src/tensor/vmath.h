// exp and the logistic sigmoid written so the compiler vectorises them inside `#pragma omp simd`
// loops (libm's expf is one call per value; softmaxes, the cross-entropy and SwiGLU's sigmoid
// called it tens of millions of times a step). Every step is an exactly rounded IEEE operation
// (multiplies, adds and fused multiply-adds spelled out as std::fma, integer scaling),
// so the vector lanes and a scalar remainder loop give the same bits for the same input.
//
// Accuracy (VectorMath.* in tests/unit/test_kernels.cpp checks it against double-precision exp,
// allowing 1.5e-7; measured 8.4e-8): relative error below 2^-22 (about 2.4e-7, 2 ulp) by
// construction wherever the result is a normal float; results below the
// normal range (x < -87.34) are subnormal as in expf, down to 0 for x < -103.98; x > 88.72
// gives +inf; NaN stays NaN.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>

namespace pcmoe {

// 2^n for n in [-126, 127] (the exponent field directly).
inline float vmath_pow2(int32_t n) { return std::bit_cast<float>((n + 127) << 23); }

// e^x = 2^n · e^r with n = round(x / ln 2) and |r| <= ln2 / 2: n by adding and subtracting
// 1.5 · 2^23 (std::floor would not vectorise without -fno-trapping-math), r from a two-part
// ln 2 (Cody and Waite: n · ln2_hi is exact), e^r from a degree-6 polynomial (Cephes expf's
// coefficients), and 2^n applied as two halves so that n = 128 and subnormal results need no
// special case.
inline float vexp(float x) {
  // Clamped so that n stays in [-150, 128] (NaN becomes -104 here and is returned as NaN below).
  float cx = x > -104.0f ? x : -104.0f;
  cx = cx < 89.0f ? cx : 89.0f;
  const float n = std::fma(cx, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
  float r = std::fma(n, -0.693359375f, cx);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.0f;
  const int32_t ni = (int32_t)n, n1 = ni >> 1;  // n1 = floor(n / 2)
  float y = p * vmath_pow2(n1) * vmath_pow2(ni - n1);
  y = x > 88.7228394f ? INFINITY : y;
  y = x < -103.972084f ? 0.0f : y;
  return x != x ? x : y;
}

// 1 / (1 + e^-z).
inline float vsigmoid(float z) { return 1.0f / (1.0f + vexp(-z)); }

}  // namespace pcmoe
