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
#include <memory>
#include <stdexcept>
#include <vector>

#include "tensor/buffer.h"
#include "tensor/dtype.h"
#include "tensor/gemm.h"
#include "tensor/gemm_kernels.h"

namespace pcmoe {
namespace {

std::atomic<bool> g_force_fallback{false};

// oneDNN's bf16 matmul only where its kernels may use bf16 units: the CPU has them and oneDNN
// is not capped below them (ONEDNN_MAX_CPU_ISA); below that it refuses runtime-shaped bf16
// plans, and the fallback forms the same products.
bool onednn_has_bf16_units() {
  static const bool has = [] {
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
  }();
  return has;
}

// Both operands of a product in bf16 (a[i] = A[i], i < na; b likewise) through the dtype
// table's conversion, each thread its share of both, in one parallel region: with passive
// OpenMP waiting each region costs a wake-up of the team, and a step forms hundreds of products.
// Small ones stay on the calling thread.
void pack_bf16(uint16_t* a, const float* A, size_t na, uint16_t* b, const float* B, size_t nb) {
  const auto convert = dtype_traits(Dtype::kBF16).from_f32;
#pragma omp parallel if (na + nb > (1u << 16))
  {
    const size_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const size_t a0 = na * t / n, a1 = na * (t + 1) / n, b0 = nb * t / n, b1 = nb * (t + 1) / n;
    convert(A + a0, a1 - a0, a + a0);
    convert(B + b0, b1 - b0, b + b0);
  }
}

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

using Dims = dnnl::memory::dims;

// The operands of one product as oneDNN sees them: src [M,K] (row-major, or column-major for
// kTN: A is [K,M]), weights [K,N] (column-major for kNT: B's rows are W's rows), dst [M,N] f32.
struct Descs {
  dnnl::memory::desc src, wei, dst;
};
Descs descs(GemmOp op, dnnl::memory::dim M, dnnl::memory::dim N, dnnl::memory::dim K) {
  using dt = dnnl::memory::data_type;
  const bool shapes_known = M != DNNL_RUNTIME_DIM_VAL;
  const dnnl::memory::dim lda = shapes_known ? (op == GemmOp::kTN ? M : K) : DNNL_RUNTIME_DIM_VAL,
                          ldb = shapes_known ? (op == GemmOp::kNT ? K : N) : DNNL_RUNTIME_DIM_VAL;
  return {dnnl::memory::desc({M, K}, dt::bf16, op == GemmOp::kTN ? Dims{1, lda} : Dims{lda, 1}),
          dnnl::memory::desc({K, N}, dt::bf16, op == GemmOp::kNT ? Dims{1, ldb} : Dims{ldb, 1}),
          dnnl::memory::desc({M, N}, dt::f32, Dims{N, 1})};
}

// One matmul per operation and accumulate flag, its shapes given at run time: the rows of a
// product vary from call to call (an expert's rows), and a primitive built per shape cost a JIT
// compilation for every new one (measured: ~100 per training step of configs/bench_moe.json,
// still growing after tens of steps). oneDNN runs these on its bf16 GEMM kernels (gemm:jit),
// within ~5% of the per-shape ones on the model's shapes.
dnnl::matmul::primitive_desc describe(GemmOp op, bool sum) {
  const dnnl::memory::dim R = DNNL_RUNTIME_DIM_VAL;
  const Descs d = descs(op, R, R, R);
  dnnl::primitive_attr attr;
  // The scratchpad, where an implementation asks for one, is ours (ThreadState::scratchpad, kept
  // between calls). oneDNN 2.6.3's gemm:jit here asks for none (0 bytes): its packing buffers
  // are its own.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (sum) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(d.src, d.wei, d.dst), attr, cpu_engine());
}

struct Plan {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul matmul;
  Plan(GemmOp op, bool sum) : pd(describe(op, sum)), matmul(pd) {}
};

struct ThreadState {
  std::unique_ptr<Plan> plans[3][2];  // [op][accumulate], built on first use
  std::vector<uint16_t> a, b;
  AlignedBuffer scratchpad;
  dnnl::stream stream{cpu_engine()};
};
ThreadState& state() {
  thread_local ThreadState s;
  return s;
}

void onednn_gemm(GemmOp op, float* C, const float* A, const float* B, int M, int N, int K, bool accumulate) {
  ThreadState& st = state();
  std::unique_ptr<Plan>& slot = st.plans[(int)op][accumulate];
  if (!slot) slot = std::make_unique<Plan>(op, accumulate);
  const Plan& plan = *slot;
  // Grown, never shrunk: a vector shrunk and grown again zero-fills what it regains, which was
  // ~4% of a bf16 step (a small product between two large ones).
  const size_t na = (size_t)M * K, nb = (size_t)K * N;
  if (st.a.size() < na) st.a.resize(na);
  if (st.b.size() < nb) st.b.resize(nb);
  pack_bf16(st.a.data(), A, na, st.b.data(), B, nb);
  const Descs d = descs(op, M, N, K);
  const dnnl::memory::desc pad_desc = plan.pd.scratchpad_desc();
  if (st.scratchpad.bytes() < pad_desc.get_size()) st.scratchpad = AlignedBuffer(pad_desc.get_size());
  dnnl::memory am(d.src, cpu_engine(), st.a.data()), bm(d.wei, cpu_engine(), st.b.data()),
      cm(d.dst, cpu_engine(), C), pm(pad_desc, cpu_engine(), st.scratchpad.data());
  plan.matmul.execute(st.stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm},
                                  {DNNL_ARG_SCRATCHPAD, pm}});
  st.stream.wait();
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
  return onednn_has_bf16_units() && !g_force_fallback ? Bf16Kernels::kOneDnn : Bf16Kernels::kFallback;
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
  if (bf16_kernels() == Bf16Kernels::kFallback)
    return s + "inputs rounded to bf16, then the fp32 sgemm (no bf16 units oneDNN may use)";
  return s + onednn_version() + " matmul (" + describe(GemmOp::kNT, false).impl_info_str() + ")";
}

}  // namespace pcmoe
