// What the product tests share: the three products by number (0: A Bᵀ, 1: A B, 2: Aᵀ B, as
// tensor/gemm.h forms them) and one entry of op(A) op(B) summed in float64.
#pragma once

#include <cmath>
#include <cstddef>

#include "tensor/gemm.h"

namespace pcmoe::test {

inline void product(int op, float* C, const float* A, const float* B, int M, int N, int K, bool acc) {
  if (op == 0) matmul_nt(C, A, B, M, N, K, acc);
  if (op == 1) matmul_nn(C, A, B, M, N, K, acc);
  if (op == 2) matmul_tn(C, A, B, M, N, K, acc);
}

// start + Σ_k op(A)[i,k] op(B)[k,j] in float64, and Σ_k |op(A)[i,k] op(B)[k,j]| (the scale a
// float32 sum's rounding error is bounded by).
struct Float64Sum {
  double sum, magnitude;
};
inline Float64Sum float64_entry(int op, const float* A, const float* B, double start, int i, int j, int M, int N,
                                int K) {
  Float64Sum r{start, 0};
  for (int k = 0; k < K; ++k) {
    const size_t ai = op == 2 ? (size_t)k * M + i : (size_t)i * K + k;
    const size_t bi = op == 0 ? (size_t)j * K + k : (size_t)k * N + j;
    r.sum += (double)A[ai] * B[bi];
    r.magnitude += std::fabs((double)A[ai] * B[bi]);
  }
  return r;
}

}  // namespace pcmoe::test
