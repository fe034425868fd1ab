#include "tensor/gemm.h"

#include <cblas.h>
#include <omp.h>

namespace pcmoe {
namespace {
int g_threads = 1;
}

void matmul_nt(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K,
              accumulate ? 1.0f : 0.0f, C, N);
}

void matmul_nn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N,
              accumulate ? 1.0f : 0.0f, C, N);
}

void matmul_tn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0f, A, M, B, N,
              accumulate ? 1.0f : 0.0f, C, N);
}

void set_num_threads(int n) {
  g_threads = n < 1 ? 1 : n;
  openblas_set_num_threads(g_threads);
  omp_set_num_threads(g_threads);
}

int num_threads() { return g_threads; }

}  // namespace pcmoe
