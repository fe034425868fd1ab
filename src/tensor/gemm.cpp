#include "tensor/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <stdexcept>

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

void sgemm_ld(GemmOp op, float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N,
              int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  const float beta = accumulate ? 1.0f : 0.0f;
  switch (op) {
    case GemmOp::kNT:
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
      break;
    case GemmOp::kNN:
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
      break;
    case GemmOp::kTN:
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
      break;
  }
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
  openblas_set_num_threads(g_threads);
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
