// Products on blocks of larger arrays, for callers that slice (attention's heads); a header of
// its own so that gemm.h's many includers do not depend on it.
#pragma once

namespace pcmoe {

// gemm.h's matmul_nt, matmul_nn, matmul_tn on blocks inside larger row-major arrays (lda,
// ldb, ldc: floats between rows), always fp32 whatever the compute dtype: attention's
// per-head scores and mixing stay fp32 like its softmax. Inside an OpenMP loop each runs on its calling thread.
void matmul_nt_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate);
void matmul_nn_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate);
void matmul_tn_ld(float* C, int ldc, const float* A, int lda, const float* B, int ldb, int M, int N, int K,
                  bool accumulate);

}  // namespace pcmoe
