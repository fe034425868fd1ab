// The kernels under the model (tensor/gemm.h, tensor/gemm_strided.h, tensor/vmath.h) and the
// optimizer's: oneDNN's sgemm against float64 sums, bf16 products' subnormal inputs, the
// vectorised exp and sigmoid against double-precision libm over their whole range, and AdamW's
// vector update against float64 and across thread counts.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "model/params.h"

#include "products.h"
#include "tensor/dtype.h"
#include "tensor/gemm.h"
#include "tensor/gemm_strided.h"
#include "tensor/vmath.h"
#include "tiny.h"
#include "train/adamw.h"

namespace pcmoe {
namespace {

// C = op(A) op(B) (+ C) in fp32 against a float64 sum. A sum of K fp32 products accumulated in
// fp32 is off by at most about K * 2^-24 * Σ|a_k b_k| (whatever order the kernel adds in);
// allowed: 2x that. Where C is overwritten it starts as NaN: the kernel must not read it.
TEST(Fp32Products, AgreeWithFloat64SumsAndNeverReadAnOverwrittenC) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  const int shapes[][3] = {{37, 50, 29}, {64, 64, 64}, {100, 33, 7}, {1, 5, 3}, {70, 96, 130}, {256, 512, 300}};
  for (const auto& s : shapes)
    for (int op = 0; op < 3; ++op)
      for (bool acc : {false, true}) {
        const int M = s[0], N = s[1], K = s[2];
        std::vector<float> A((size_t)M * K), B((size_t)K * N), C((size_t)M * N);
        for (float& x : A) x = normal(rng);
        for (float& x : B) x = normal(rng);
        for (float& x : C) x = acc ? normal(rng) : std::numeric_limits<float>::quiet_NaN();
        const std::vector<float> C0 = C;
        test::product(op, C.data(), A.data(), B.data(), M, N, K, acc);
        double worst = 0;
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            const double start = acc ? C0[(size_t)i * N + j] : 0;
            const auto ref = test::float64_entry(op, A.data(), B.data(), start, i, j, M, N, K);
            const double bound = 2.0 * (K + 1) * 0x1p-24 * (std::fabs(start) + ref.magnitude) + 1e-30;
            const float c = C[(size_t)i * N + j];
            worst = std::isfinite(c) ? std::max(worst, std::fabs(c - ref.sum) / bound) : INFINITY;
          }
        EXPECT_LE(worst, 1.0) << "op " << op << " acc " << acc << " " << M << "x" << N << "x" << K;
      }
}

// The strided products (attention's per-head blocks) touch only their block of a larger C,
// and K = 0 gives zeros (or leaves C as it was when accumulating).
TEST(Fp32Products, StridedBlocksAndEmptySums) {
  const int M = 5, N = 3, K = 4, ld = 9;
  std::vector<float> A((size_t)M * ld), B((size_t)N * ld), C((size_t)M * ld, -7.0f);
  for (size_t i = 0; i < A.size(); ++i) A[i] = float(i % 7) - 3.0f;
  for (size_t i = 0; i < B.size(); ++i) B[i] = float(i % 5) - 2.0f;
  matmul_nt_ld(C.data() + 2, ld, A.data() + 1, ld, B.data() + 3, ld, M, N, K, false);
  for (int i = 0; i < M; ++i)
    for (int c = 0; c < ld; ++c) {
      float want = -7.0f;
      if (c >= 2 && c < 2 + N) {
        want = 0;  // small integers: exact in any order
        for (int k = 0; k < K; ++k) want += A[(size_t)i * ld + 1 + k] * B[(size_t)(c - 2) * ld + 3 + k];
      }
      EXPECT_EQ(C[(size_t)i * ld + c], want) << i << "," << c;
    }
  std::vector<float> D(6, std::numeric_limits<float>::quiet_NaN()), E(6, 2.5f);
  matmul_nt(D.data(), A.data(), B.data(), 2, 3, 0, false);
  matmul_nn(E.data(), A.data(), B.data(), 2, 3, 0, true);
  for (float d : D) EXPECT_EQ(d, 0.0f);
  for (float e : E) EXPECT_EQ(e, 2.5f);
}

// What gemm.h says of subnormal bf16 inputs: oneDNN's kernels (bf16 units) count them as zero,
// the fallback keeps them; normal inputs are rounded alike on both paths.
TEST(Bf16Products, SubnormalInputsOnEachPath) {
  const int n = 64;
  std::vector<float> A(n * n, 0.0f), B(n * n, 0.0f), C(n * n);
  A[0] = 1e-39f;  // subnormal in fp32 and in bf16: C[0] = A[0] B[0]
  B[0] = 1e30f;
  A[n + 1] = 1.00390625f;  // 1 + 2^-8, a tie: rounds to 1 (even); C[n] = A[n+1] B[n]
  B[n] = 3.0f;
  const auto product = [&] {
    const ComputeDtypeScope bf16(Dtype::kBF16);
    matmul_nn(C.data(), A.data(), B.data(), n, n, n, false);
  };
  if (bf16_kernels() == Bf16Kernels::kOneDnn) {
    product();
    EXPECT_EQ(C[0], 0.0f);
    EXPECT_EQ(C[n], 3.0f);
  }
  force_bf16_fallback(true);
  product();
  force_bf16_fallback(false);
  EXPECT_FLOAT_EQ(C[0], bf16_to_float(float_to_bf16(1e-39f)) * bf16_to_float(float_to_bf16(1e30f)));
  EXPECT_GT(C[0], 9e-10f);
  EXPECT_EQ(C[n], 3.0f);
}

// vexp against exp in double: at most 1.5e-7 relative error (1.26 units in the last place;
// measured 8.4e-8, Cephes expf's polynomial) wherever e^x is a normal float, sampled densely
// over the whole range; below it (subnormal results) within that plus half a subnormal step.
// The vectorised loop and single scalar calls give the same bits.
TEST(VectorMath, ExpRelativeErrorOverItsRange) {
  const int n = 4'000'000;
  const double lo = -103.9, hi = 88.72;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) x[i] = (float)(lo + (hi - lo) * (i + 0.5) / n);
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] = vexp(x[i]);
  double worst = 0, worst_sub = 0;
  for (int i = 0; i < n; ++i) {
    const double e = std::exp((double)x[i]), err = std::fabs(y[i] - e);
    if (e >= std::numeric_limits<float>::min()) worst = std::max(worst, err / e);
    else worst_sub = std::max(worst_sub, err / (1.5e-7 * e + 0x1p-150));
  }
  EXPECT_LE(worst, 1.5e-7);
  EXPECT_LE(worst_sub, 1.0);
  for (int i = 0; i < n; i += 99991) {
    volatile float xi = x[i];
    EXPECT_EQ(vexp(xi), y[i]) << x[i];
  }
  EXPECT_EQ(vexp(0.0f), 1.0f);
  EXPECT_EQ(vexp(-INFINITY), 0.0f);
  EXPECT_EQ(vexp(-104.0f), 0.0f);
  EXPECT_EQ(vexp(88.75f), INFINITY);
  EXPECT_EQ(vexp(INFINITY), INFINITY);
  EXPECT_TRUE(std::isnan(vexp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(vexp(88.72f), 3.39e38f);  // the largest results stay finite
}

// vsigmoid against 1 / (1 + e^-z) in double: 1 / (1 + e) adds at most two roundings to vexp's
// error, so 4e-7 relative; the tails saturate to 0 and 1 as they should.
TEST(VectorMath, SigmoidRelativeError) {
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float z = -80.0f + 160.0f * (float)i / 200000;
    const double want = 1.0 / (1.0 + std::exp(-(double)z));
    worst = std::max(worst, std::fabs(vsigmoid(z) - want) / want);
  }
  EXPECT_LE(worst, 4e-7);
  EXPECT_EQ(vsigmoid(200.0f), 1.0f);
  EXPECT_EQ(vsigmoid(-200.0f), 0.0f);
  EXPECT_EQ(vsigmoid(0.0f), 0.5f);
}

// AdamW's update (train/adamw.cpp: masked vector edges, streamed aligned middles, a thread's
// share starting anywhere) gives the same bits at 1 and 2 threads over 3 steps of a tiny model
// whose tensors start off 64-byte lines, and each step agrees with the same step done in
// float64 from the same fp32 state and gradients within a few fp32 roundings of its terms.
TEST(AdamWUpdate, SameBitsAtAnyThreadCountAndCloseToFloat64) {
  ModelConfig m = tiny::model();
  m.d_model = 40;  // sizes off the 16-float vector width: tensors start anywhere in a line
  m.vocab_size = 61;
  m.d_ff = 23;
  TrainConfig t = tiny::train();
  t.weight_decay = 0.1f;
  std::vector<float> out[2];
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    ParamSet ps(m, ParamSelection{});
    ps.init(7);
    AdamW opt(ps, t);
    const size_t n = ps.numel();
    std::mt19937 rng(9);
    std::normal_distribution<float> normal;
    double worst = 0;
    for (int step = 1; step <= 3; ++step) {
      for (size_t i = 0; i < n; ++i) ps.grads()[i] = normal(rng) * 1e-2f;
      const std::vector<float> p0(ps.values(), ps.values() + n), m0(opt.m(), opt.m() + n), v0(opt.v(), opt.v() + n);
      const float lr = 0.01f * step;
      opt.step(ps, lr);
      const double b1 = t.beta1, b2 = t.beta2, step_size = lr / (1 - std::pow(b1, step)),
                   bc2 = std::sqrt(1 - std::pow(b2, step));
      for (const ParamTensor& pt : ps.tensors())
        for (size_t i = pt.offset; i < pt.offset + pt.numel; ++i) {
          const double g = ps.grads()[i], mi = opt.m()[i], vi = opt.v()[i];
          const double bound_m = 1e-6 * (b1 * std::fabs(m0[i]) + (1 - b1) * std::fabs(g)),
                       bound_v = 1e-6 * (b2 * v0[i] + (1 - b2) * g * g);
          worst = std::max(worst, std::fabs(mi - (b1 * m0[i] + (1 - b1) * g)) / bound_m);
          worst = std::max(worst, std::fabs(vi - (b2 * v0[i] + (1 - b2) * g * g)) / bound_v);
          const double delta = step_size * mi / (std::sqrt(vi) / bc2 + t.eps);
          const double want = p0[i] * (pt.decay ? 1 - (double)lr * t.weight_decay : 1.0) - delta;
          worst = std::max(worst, std::fabs(ps.values()[i] - want) / (1e-6 * (std::fabs(p0[i]) + std::fabs(delta))));
        }
    }
    EXPECT_LE(worst, 1.0) << threads << " threads";
    out[threads - 1].assign(ps.values(), ps.values() + n);
  }
  EXPECT_EQ(out[0], out[1]);
}

}  // namespace
}  // namespace pcmoe
