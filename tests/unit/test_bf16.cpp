// The dtype table and bf16 compute (tensor/dtype.h, tensor/gemm.h): conversions against the
// bit-level definition, bf16 products against float64 sums of the rounded inputs (with oneDNN's
// kernels where the CPU has bf16 units, and with the fallback forced), and a model step in bf16
// against the same step in fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "model/local_experts.h"
#include "model/model.h"
#include "model/params.h"
#include "products.h"
#include "tensor/dtype.h"
#include "tensor/gemm.h"
#include "tiny.h"

namespace pcmoe {
namespace {

float bits_to_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

TEST(DtypeTable, NamesSizesAndStrictParsing) {
  EXPECT_STREQ(to_string(Dtype::kF32), "fp32");
  EXPECT_STREQ(to_string(Dtype::kBF16), "bf16");
  EXPECT_STREQ(to_string(Dtype::kF16), "fp16");
  EXPECT_EQ(dtype_traits(Dtype::kF32).size, 4u);
  EXPECT_EQ(dtype_traits(Dtype::kBF16).size, 2u);
  EXPECT_EQ(dtype_traits(Dtype::kF16).size, 2u);
  EXPECT_EQ(parse_dtype("bf16", "k"), Dtype::kBF16);
  try {
    parse_dtype("bfloat16", "model.compute_dtype");
    ADD_FAILURE() << "accepted bfloat16";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("model.compute_dtype"), std::string::npos) << e.what();
  }
}

// Rounding to bf16 keeps the top 16 bits after adding half an ulp, ties to the even one: the
// table's row conversion and round_to_bf16 agree with that definition, bit for bit.
TEST(DtypeTable, Bf16RowsRoundToNearestEven) {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, INFINITY, -INFINITY, 3.389531e38f, -3.4e38f, 1e-40f};
  for (uint32_t low : {0x7fffu, 0x8000u, 0x8001u, 0x18000u, 0x10000u})
    for (uint32_t high : {0x3f800000u, 0xbf810000u, 0x00010000u}) v.push_back(bits_to_float(high + low));
  std::mt19937 rng(3);
  for (int i = 0; i < 1000; ++i) v.push_back(bits_to_float(rng() & 0x7f7fffffu));
  std::vector<uint16_t> rows(v.size());
  dtype_traits(Dtype::kBF16).from_f32(v.data(), v.size(), rows.data());
  std::vector<float> rounded = v;
  round_to_bf16(rounded.data(), rounded.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t x;
    std::memcpy(&x, &v[i], 4);
    const uint32_t lsb = (x >> 16) & 1, rest = x & 0xffff;
    const uint32_t want = (x >> 16) + (rest > 0x8000 || (rest == 0x8000 && lsb));
    EXPECT_EQ(rows[i], uint16_t(want)) << v[i];
    EXPECT_EQ(rows[i], float_to_bf16(v[i])) << v[i];
    EXPECT_EQ(rounded[i], bf16_to_float(rows[i])) << v[i];
  }
}

// C = op(A) op(B) (+ C) against float64 sums of the bf16-rounded inputs. A sum of K products,
// each exact in fp32 (8-bit by 8-bit significands), accumulated in fp32 is off by at most
// about K * 2^-24 * Σ|a_k b_k|; allowed: 2x that.
void check_products(const char* what) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  const int shapes[][3] = {{37, 50, 29}, {64, 64, 64}, {100, 33, 7}, {1, 5, 3}, {70, 96, 130}};
  for (const auto& s : shapes)
    for (int op = 0; op < 3; ++op)
      for (bool acc : {false, true}) {
        const int M = s[0], N = s[1], K = s[2];
        std::vector<float> A((size_t)M * K), B((size_t)K * N), C((size_t)M * N);
        for (float& x : A) x = normal(rng);
        for (float& x : B) x = normal(rng);
        for (float& x : C) x = normal(rng);
        const std::vector<float> C0 = C;
        {
          const ComputeDtypeScope bf16(Dtype::kBF16);
          test::product(op, C.data(), A.data(), B.data(), M, N, K, acc);
        }
        std::vector<float> Ar = A, Br = B;
        round_to_bf16(Ar.data(), Ar.size());
        round_to_bf16(Br.data(), Br.size());
        double worst = 0, unrounded_gap = 0;
        for (int i = 0; i < M; ++i)
          for (int j = 0; j < N; ++j) {
            const double start = acc ? C0[(size_t)i * N + j] : 0;
            const auto ref = test::float64_entry(op, Ar.data(), Br.data(), start, i, j, M, N, K);
            const double exact = test::float64_entry(op, A.data(), B.data(), start, i, j, M, N, K).sum;
            const double bound = 2.0 * (K + 1) * 0x1p-24 * (ref.magnitude + std::fabs(ref.sum)) + 1e-30;
            worst = std::max(worst, std::fabs(C[(size_t)i * N + j] - ref.sum) / bound);
            unrounded_gap = std::max(unrounded_gap, std::fabs(exact - ref.sum) / bound);
          }
        EXPECT_LE(worst, 1.0) << what << " op " << op << " acc " << acc << " " << M << "x" << N << "x" << K;
        // The products really took bf16 inputs: unrounded ones land far outside the bound.
        if (M * N > 100) {
          EXPECT_GT(unrounded_gap, 10.0) << what << " op " << op;
        }
      }
}

TEST(Bf16Compute, ProductsAreFp32SumsOfRoundedInputs) {
  check_products(bf16_kernels() == Bf16Kernels::kOneDnn ? "oneDNN" : "fallback (no bf16 units)");
}

TEST(Bf16Compute, ForcedFallbackFormsTheSameProducts) {
  force_bf16_fallback(true);
  EXPECT_EQ(bf16_kernels(), Bf16Kernels::kFallback);
  check_products("forced fallback");
  force_bf16_fallback(false);
}

TEST(Bf16Compute, ScopesNestAndFp16IsNoComputeDtype) {
  EXPECT_EQ(compute_dtype(), Dtype::kF32);
  {
    const ComputeDtypeScope outer(Dtype::kBF16);
    {
      const ComputeDtypeScope inner(Dtype::kF32);
      EXPECT_EQ(compute_dtype(), Dtype::kF32);
    }
    EXPECT_EQ(compute_dtype(), Dtype::kBF16);
  }
  EXPECT_EQ(compute_dtype(), Dtype::kF32);
  EXPECT_THROW({ const ComputeDtypeScope fp16(Dtype::kF16); }, std::runtime_error);
  EXPECT_EQ(compute_dtype(), Dtype::kF32);
}

// One forward and backward of the tiny model, in `dtype`; returns the loss and every gradient.
std::pair<float, std::vector<float>> model_step(Dtype dtype) {
  ModelConfig cfg = tiny::model();
  cfg.compute_dtype = dtype;
  ParamSet params(cfg, ParamSelection{});
  params.init(5);
  const int B = 4, T = cfg.seq_len;
  LocalExperts experts(cfg, params, B * T * cfg.top_k);
  Model model(cfg, params, experts, B);
  std::vector<int32_t> windows((size_t)B * (T + 1));
  std::mt19937 rng(9);
  for (int32_t& t : windows) t = int32_t(rng() % cfg.vocab_size);
  const float loss = model.forward(windows.data(), B, 1.0f).total;
  model.backward();
  std::vector<float> grads;
  for (const ParamTensor& t : params.tensors()) grads.insert(grads.end(), params.grad(t.name), params.grad(t.name) + t.numel);
  return {loss, grads};
}

// bf16 rounds each product input by up to 2^-9 relative: the loss moves by far less than 1%
// and the gradient by a few percent of its size at most, yet it does move.
TEST(Bf16Compute, ModelStepStaysCloseToFp32AndFallbackAgrees) {
  set_num_threads(2);
  const auto [loss32, g32] = model_step(Dtype::kF32);
  const auto [loss16, g16] = model_step(Dtype::kBF16);
  force_bf16_fallback(true);
  const auto [lossfb, gfb] = model_step(Dtype::kBF16);
  force_bf16_fallback(false);
  EXPECT_NEAR(loss16, loss32, 1e-2 * loss32);
  EXPECT_NE(loss16, loss32);
  double diff = 0, norm = 0, fb_diff = 0;
  for (size_t i = 0; i < g32.size(); ++i) {
    diff += (double)(g16[i] - g32[i]) * (g16[i] - g32[i]);
    fb_diff += (double)(g16[i] - gfb[i]) * (g16[i] - gfb[i]);
    norm += (double)g32[i] * g32[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 0.05);
  EXPECT_GT(std::sqrt(diff / norm), 1e-5);
  // The fallback multiplies the same bf16 values; only fp32 summation order differs (and the rare
  // intermediate that then rounds to the other bf16 neighbour).
  EXPECT_NEAR(lossfb, loss16, 1e-5 * loss16);
  EXPECT_LT(std::sqrt(fb_diff / norm), 1e-3);
}

}  // namespace
}  // namespace pcmoe
