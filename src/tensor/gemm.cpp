#include "tensor/gemm.h"

#include <omp.h>

#include <cstring>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdexcept>
#include <string>

#include "tensor/gemm_kernels.h"
#include "tensor/gemm_strided.h"

namespace pcmoe {
namespace {
thread_local int g_threads = 1;  // this thread's: concurrent parties each set their own
thread_local Dtype t_compute = Dtype::kF32;

void product(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (t_compute == Dtype::kBF16) bf16_gemm_op(op, C, A, B, M, N, K, accumulate);
  else sgemm_op(op, C, A, B, M, N, K, accumulate);
}

// oneDNN's sgemm (row-major, BLAS semantics: beta 0 never reads C). It dispatches on the CPU's
// own feature flags (capped only by ONEDNN_MAX_CPU_ISA), whatever OPENBLAS_CORETYPE says, and
// runs on the calling thread's OpenMP team (one thread inside a parallel region).
void sgemm_ld(GemmOp op, float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N,
              int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate)
      for (int r = 0; r < M; ++r) std::memset(C + (size_t)r * ldc, 0, (size_t)N * sizeof(float));
    return;
  }
  const char ta = op == GemmOp::kTN ? 'T' : 'N', tb = op == GemmOp::kNT ? 'T' : 'N';
  const dnnl_status_t st = dnnl_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, accumulate ? 1.0f : 0.0f, C, ldc);
  if (st != dnnl_success)
    throw std::runtime_error(std::string("oneDNN sgemm ") + ta + tb + " failed (" + dnnl_status2str(st) + ") for M " +
                             std::to_string(M) + ", N " + std::to_string(N) + ", K " + std::to_string(K));
}
}  // namespace

void sgemm_op(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  const int lda = op == GemmOp::kTN ? M : K, ldb = op == GemmOp::kNT ? K : N;
  sgemm_ld(op, C, N, A, lda, B, ldb, M, N, K, accumulate);
}

void matmul_nt_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate) {
  sgemm_ld(GemmOp::kNT, C, ldc, A, lda, B, ldb, M, N, K, accumulate);
}

void matmul_nn_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate) {
  sgemm_ld(GemmOp::kNN, C, ldc, A, lda, B, ldb, M, N, K, accumulate);
}

void matmul_tn_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate) {
  sgemm_ld(GemmOp::kTN, C, ldc, A, lda, B, ldb, M, N, K, accumulate);
}

void matmul_nt(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  product(GemmOp::kNT, C, A, B, M, N, K, accumulate);
}

void matmul_nn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  product(GemmOp::kNN, C, A, B, M, N, K, accumulate);
}

void matmul_tn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  product(GemmOp::kTN, C, A, B, M, N, K, accumulate);
}

void set_num_threads(int n) {
  g_threads = n < 1 ? 1 : n;
  omp_set_num_threads(g_threads);
}

int num_threads() { return g_threads; }

Dtype compute_dtype() { return t_compute; }

ComputeDtypeScope::ComputeDtypeScope(Dtype d) : previous_(t_compute) {
  if (d == Dtype::kF16) throw std::runtime_error("fp16 compute is not supported (its range overflows; use bf16)");
  t_compute = d;
}

ComputeDtypeScope::~ComputeDtypeScope() { t_compute = previous_; }

}  // namespace pcmoe
