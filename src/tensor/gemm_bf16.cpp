// bf16 products with fp32 accumulation. On CPUs with bf16 units, oneDNN's matmul (measured on
// an AMD EPYC with avx512_bf16, 2 threads: about twice the fp32 sgemm; Debian 12's OpenBLAS
// 0.3.21 exports no sbgemm). Elsewhere the fallback: inputs rounded to bf16 in fp32, then the
// fp32 sgemm, which forms the same products (a bf16 x bf16 product is exact in fp32).
#include <omp.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "tensor/gemm.h"
#include "tensor/gemm_kernels.h"

namespace pcmoe {
namespace {

std::atomic<bool> g_force_fallback{false};

bool cpu_has_bf16_units() {
  static const bool has = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return has;
}

// Rows and reduction lengths vary from call to call (an expert's rows, a batch's tokens); a
// oneDNN primitive is built per shape, so they are padded with zeros to a multiple of this
// and each padded shape is built once per thread.
constexpr int kPad = 32;
int padded(int n) { return (n + kPad - 1) / kPad * kPad; }

uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  return uint16_t((x & 0x7fffffffu) > 0x7f800000u ? ((x >> 16) | 0x0040u) : rounded);
}

// dst[rows_pad, cols_pad] (row-major bf16) = src[rows, cols] (row stride ld), zeros elsewhere.
void pack_bf16(uint16_t* dst, const float* src, int rows, int cols, size_t ld, int rows_pad, int cols_pad) {
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > (1u << 15))
  for (int r = 0; r < rows_pad; ++r) {
    uint16_t* d = dst + (size_t)r * cols_pad;
    if (r >= rows) {
      std::memset(d, 0, (size_t)cols_pad * 2);
      continue;
    }
    const float* s = src + (size_t)r * ld;
#pragma omp simd
    for (int c = 0; c < cols; ++c) d[c] = to_bf16(s[c]);
    for (int c = cols; c < cols_pad; ++c) d[c] = 0;
  }
}

struct Key {
  GemmOp op;
  int M, N, K;
  bool sum;
  bool operator==(const Key&) const = default;
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    return ((((size_t)k.op * 1000003u + k.M) * 1000003u + k.N) * 1000003u + k.K) * 2 + k.sum;
  }
};

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// The matmul for padded shapes: src [M,K] (row-major, or column-major for kTN), weights [K,N]
// (column-major for kNT: B's rows are W's rows), dst [M,N] f32; sum: dst += product.
dnnl::matmul::primitive_desc describe(const Key& k) {
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  const dnnl::memory::dim M = k.M, N = k.N, K = k.K;
  const dnnl::memory::desc src({M, K}, dt::bf16, k.op == GemmOp::kTN ? dims{1, M} : dims{K, 1});
  const dnnl::memory::desc wei({K, N}, dt::bf16, k.op == GemmOp::kNT ? dims{1, K} : dims{N, 1});
  const dnnl::memory::desc dst({M, N}, dt::f32, dims{N, 1});
  dnnl::primitive_attr attr;
  if (k.sum) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, wei, dst), attr, cpu_engine());
}

struct Plan {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
  explicit Plan(const Key& k) : pd(describe(k)), matmul(pd) {}
};

struct ThreadState {
  std::unordered_map<Key, Plan, KeyHash> plans;
  std::vector<uint16_t> a, b;
  std::vector<float> staged;
  dnnl::stream stream{cpu_engine()};
};
ThreadState& state() {
  thread_local ThreadState s;
  return s;
}

void onednn_gemm(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  ThreadState& st = state();
  const int Mp = padded(M), Kp = padded(K);
  // Padded rows of C go to a staging buffer, which is then added or copied into C.
  const bool direct = Mp == M;
  const Key key{op, Mp, N, Kp, direct && accumulate};
  auto it = st.plans.find(key);
  if (it == st.plans.end()) it = st.plans.try_emplace(key, key).first;
  const Plan& plan = it->second;
  st.a.resize((size_t)Mp * Kp);
  st.b.resize((size_t)Kp * N);
  if (op == GemmOp::kTN) pack_bf16(st.a.data(), A, K, M, M, Kp, Mp);  // [Kp, Mp]: A's own layout
  else pack_bf16(st.a.data(), A, M, K, K, Mp, Kp);
  if (op == GemmOp::kNT) pack_bf16(st.b.data(), B, N, K, K, N, Kp);  // [N, Kp]
  else pack_bf16(st.b.data(), B, K, N, N, Kp, N);
  if (!direct) st.staged.resize((size_t)Mp * N);
  float* out = direct ? C : st.staged.data();
  dnnl::memory am(plan.pd.src_desc(), cpu_engine(), st.a.data()),
      bm(plan.pd.weights_desc(), cpu_engine(), st.b.data()), cm(plan.pd.dst_desc(), cpu_engine(), out);
  plan.matmul.execute(st.stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  st.stream.wait();
  if (direct) return;
  const size_t n = (size_t)M * N;
  if (accumulate) {
#pragma omp parallel for simd schedule(static) if (n > (1u << 15))
    for (size_t i = 0; i < n; ++i) C[i] += out[i];
  } else {
    std::memcpy(C, out, n * sizeof(float));
  }
}

void fallback_gemm(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  thread_local std::vector<float> a, b;
  a.assign(A, A + (size_t)M * K);
  b.assign(B, B + (size_t)K * N);
  round_to_bf16(a.data(), a.size());
  round_to_bf16(b.data(), b.size());
  sgemm_op(op, C, a.data(), b.data(), M, N, K, accumulate);
}

}  // namespace

Bf16Kernels bf16_kernels() {
  return cpu_has_bf16_units() && !g_force_fallback ? Bf16Kernels::kOneDnn : Bf16Kernels::kFallback;
}

void force_bf16_fallback(bool on) { g_force_fallback = on; }

void bf16_gemm_op(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  if (K == 0) {
    if (!accumulate) std::memset(C, 0, (size_t)M * N * sizeof(float));
    return;
  }
  if (bf16_kernels() == Bf16Kernels::kOneDnn) onednn_gemm(op, C, A, B, M, N, K, accumulate);
  else fallback_gemm(op, C, A, B, M, N, K, accumulate);
}

namespace {
std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
}

// The instruction set oneDNN's kernels use on this CPU.
const char* onednn_isa() {
  switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx: return "avx";
    default: return "sse4.1 or older";
  }
}
}  // namespace

std::string gemm_kernels_info() {
  std::string s = "fp32: " + onednn_version() + " sgemm (" + onednn_isa() + "); bf16: ";
  if (bf16_kernels() == Bf16Kernels::kFallback) return s + "inputs rounded to bf16, then the fp32 sgemm (no bf16 units)";
  const Key probe{GemmOp::kNT, 256, 256, 256, false};
  return s + onednn_version() + " matmul (" + describe(probe).impl_info_str() + ")";
}

}  // namespace pcmoe
