// Matrix products over row-major fp32 arrays, all through one call per shape. `accumulate` adds
// the product into C (gradients accumulate); otherwise C is overwritten.
//
// The compute dtype (model.compute_dtype) decides how a product is formed: fp32 (oneDNN's
// sgemm), or bf16: both inputs rounded to bf16 (nearest even), products accumulated in fp32,
// the output in fp32 (gemm_bf16.cpp). Everything that is not a matrix product stays fp32.
#pragma once
#include <string>

#include "tensor/dtype.h"

namespace pcmoe {

// C[M,N] = A[M,K] · B[N,K]ᵀ   (a linear layer's forward: y = x Wᵀ)
void matmul_nt(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);
// C[M,N] = A[M,K] · B[K,N]    (input gradient: dx = dy W)
void matmul_nn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);
// C[M,N] = A[K,M]ᵀ · B[K,N]   (weight gradient: dW = dyᵀ x)
void matmul_tn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);

// Threads used by oneDNN's products and by our own OpenMP loops in the calling thread; fixed per run for
// bitwise determinism (a thread that computes, e.g. a server's or a concurrent party's, sets its own).
void set_num_threads(int n);
int num_threads();

// The dtype this thread's matrix products take their inputs in: fp32 unless a scope says bf16.
// Whoever computes a model opens a scope with the model's compute dtype; what must stay exact
// (the router, DP-SGD's per-unit norms and clipped sums) opens an fp32 scope inside it.
Dtype compute_dtype();
class ComputeDtypeScope {
 public:
  explicit ComputeDtypeScope(Dtype d);
  ~ComputeDtypeScope();
  ComputeDtypeScope(const ComputeDtypeScope&) = delete;
  ComputeDtypeScope& operator=(const ComputeDtypeScope&) = delete;

 private:
  Dtype previous_;
};

// The bf16 products' kernels. kOneDnn where oneDNN may use bf16 units (avx512_bf16 or AMX; not
// with ONEDNN_MAX_CPU_ISA below them): oneDNN's
// matmul, whose dot-product instructions count subnormal bf16 inputs (below 1.2e-38) as zero.
// kFallback elsewhere: the inputs rounded to bf16 but held in fp32, then the fp32 sgemm (the
// same products, each exact in fp32, at about 0.8 of fp32 speed with the rounding pass;
// subnormals kept). Tests force the fallback.
enum class Bf16Kernels { kOneDnn, kFallback };
Bf16Kernels bf16_kernels();
void force_bf16_fallback(bool on);
// A line naming the libraries and kernels in use (benchmarks print it).
std::string gemm_kernels_info();

}  // namespace pcmoe
