// The machine's matrix-product rates, as pcmoe forms its products (tensor/gemm.h): 1024^3 in
// fp32 (oneDNN sgemm) and in bf16 (bf16 inputs, fp32 accumulation), at a given thread count;
// and bf16 through the fallback a CPU without bf16 units takes, to say what bf16 costs there.
// Prints one JSON line; bench/bench_train.py reads it to say what fraction of the fp32 rate
// training reaches.   pcmoe_gemm_rate [threads]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <vector>

#include "tensor/cpu.h"
#include "tensor/gemm.h"

using namespace pcmoe;

namespace {
// GFLOP/s of C = A Bᵀ at n^3, the best of five timed rounds after a warm-up call.
double rate(Dtype dtype, int n) {
  const ComputeDtypeScope scope(dtype);
  std::vector<float> A((size_t)n * n), B((size_t)n * n), C((size_t)n * n);
  for (size_t i = 0; i < A.size(); ++i) {
    A[i] = float(i % 17) * 0.01f;
    B[i] = float(i % 13) * 0.02f;
  }
  matmul_nt(C.data(), A.data(), B.data(), n, n, n, false);
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < 4; ++r) matmul_nt(C.data(), A.data(), B.data(), n, n, n, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 4 * 2.0 * n * n * n / s / 1e9);
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  set_up_cpu_runtime(argv);
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  set_num_threads(threads);
  nlohmann::json out = {{"threads", threads}, {"n", 1024}, {"fp32_gflops", rate(Dtype::kF32, 1024)},
                        {"bf16_gflops", rate(Dtype::kBF16, 1024)}, {"kernels", gemm_kernels_info()}};
  force_bf16_fallback(true);
  out["bf16_fallback_gflops"] = rate(Dtype::kBF16, 1024);
  force_bf16_fallback(false);
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
