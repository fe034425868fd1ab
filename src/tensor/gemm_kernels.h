// Internal to tensor/: the three products as one operation code, so the bf16 path and the
// fp32 BLAS path share one dispatch (gemm.cpp, gemm_bf16.cpp).
#pragma once

namespace pcmoe {

enum class GemmOp { kNT, kNN, kTN };  // as matmul_nt, matmul_nn, matmul_tn in gemm.h

// fp32 inputs, fp32 products: oneDNN's sgemm.
void sgemm_op(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);
// bf16-rounded inputs, fp32 accumulation and output (oneDNN or the fallback, gemm.h).
void bf16_gemm_op(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate);

}  // namespace pcmoe
