// Matrix products over row-major fp32 arrays, all through one BLAS call. `accumulate` adds the
// product into C (gradients accumulate); otherwise C is overwritten.
#pragma once

namespace pcmoe {

// C[M,N] = A[M,K] · B[N,K]ᵀ   (a linear layer's forward: y = x Wᵀ)
void matmul_nt(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);
// C[M,N] = A[M,K] · B[K,N]    (input gradient: dx = dy W)
void matmul_nn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);
// C[M,N] = A[K,M]ᵀ · B[K,N]   (weight gradient: dW = dyᵀ x)
void matmul_tn(float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);

// Threads used by BLAS and by our own OpenMP loops; fixed per run for bitwise determinism.
void set_num_threads(int n);
int num_threads();

}  // namespace pcmoe
