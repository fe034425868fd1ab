#include "model/per_unit.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "tensor/gemm.h"

namespace pcmoe {

std::vector<Segment> unit_segments(const int* unit, int n) {
  std::vector<Segment> segs;
  std::vector<int> seen;
  for (int r = 0; r < n;) {
    int e = r + 1;
    while (e < n && unit[e] == unit[r]) ++e;
    if (std::find(seen.begin(), seen.end(), unit[r]) != seen.end())
      throw std::logic_error("a privacy unit's rows are not contiguous");
    seen.push_back(unit[r]);
    segs.push_back({r, e, unit[r]});
    r = e;
  }
  return segs;
}

namespace {
// Below this many elements a loop runs on one thread: a DP batch makes thousands of small
// per-unit reductions, and a parallel region costs more than they do (far more on a busy machine).
constexpr size_t kParallelMin = 1 << 16;

double sum_of_squares(const float* x, size_t n) {
  double s = 0;
#pragma omp parallel for simd reduction(+ : s) schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) s += (double)x[i] * x[i];
  return s;
}
}  // namespace

void linear_unit_sq_norms(const float* G, const float* A, int out, int in,
                          const std::vector<Segment>& segs, double* unit_sq, float* scratch,
                          size_t scratch_floats) {
  for (const Segment& s : segs) {
    const size_t n = s.end - s.begin;
    const float* g = G + (size_t)s.begin * out;
    const float* a = A + (size_t)s.begin * in;
    const double ghost_cost = (double)n * n * (out + in), full_cost = (double)n * out * in;
    if (ghost_cost < full_cost && 2 * n * n <= scratch_floats) {
      float* ga = scratch;
      float* gg = scratch + n * n;
      matmul_nt(ga, a, a, (int)n, (int)n, in, false);
      matmul_nt(gg, g, g, (int)n, (int)n, out, false);
      double s2 = 0;
#pragma omp parallel for simd reduction(+ : s2) schedule(static) if (n * n > kParallelMin)
      for (size_t i = 0; i < n * n; ++i) s2 += (double)ga[i] * gg[i];
      unit_sq[s.unit] += s2;
    } else {
      if ((size_t)out * in > scratch_floats) throw std::logic_error("per-unit norm scratch too small");
      matmul_tn(scratch, g, a, out, in, (int)n, false);
      unit_sq[s.unit] += sum_of_squares(scratch, (size_t)out * in);
    }
  }
}

void linear_weighted_grad(float* dW, const float* G, const float* A, int N, int out, int in,
                          const float* f, float* scratch) {
  // Scale the narrower operand's rows.
  const bool scale_a = in <= out;
  const int w = scale_a ? in : out;
  const float* src = scale_a ? A : G;
#pragma omp parallel for schedule(static) if ((size_t)N * w > kParallelMin)
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < w; ++c) scratch[(size_t)r * w + c] = f[r] * src[(size_t)r * w + c];
  matmul_tn(dW, scale_a ? G : scratch, scale_a ? scratch : A, out, in, N, true);
}

GradSink::GradSink(SinkMode mode, const int* token_unit, int N, int n_units, float* scratch, size_t scratch_floats)
    : mode_(mode), token_unit_(token_unit), n_units_(n_units), scratch_(scratch), scratch_floats_(scratch_floats),
      segs_(unit_segments(token_unit, N)) {}

GradSink GradSink::unit_norms(const int* token_unit, int N, int n_units, double* unit_sq, float* scratch,
                              size_t scratch_floats) {
  GradSink s(SinkMode::kUnitNorms, token_unit, N, n_units, scratch, scratch_floats);
  s.unit_sq_ = unit_sq;
  return s;
}

GradSink GradSink::clipped(const int* token_unit, int N, int n_units, const float* factor, float* scratch,
                           size_t scratch_floats) {
  GradSink s(SinkMode::kClipped, token_unit, N, n_units, scratch, scratch_floats);
  s.factor_ = factor;
  return s;
}

GradSink GradSink::frozen() {
  GradSink s;
  s.mode_ = SinkMode::kFrozen;
  return s;
}

const float* GradSink::row_factors(int N) const {
  row_f_.resize(N);
  const float* f = group_factor();
  for (int r = 0; r < N; ++r) row_f_[r] = f[token_unit_[r]];
  return row_f_.data();
}

void GradSink::linear(float* dW, const float* G, const float* A, int N, int out, int in) const {
  // DP-SGD's per-unit norms and clipped sums in fp32 whatever the compute dtype: the clip bound
  // holds for the sum pass 2 forms only if it is formed as exactly as the norms pass 1 measured.
  const ComputeDtypeScope exact(mode_ == SinkMode::kUnitNorms || mode_ == SinkMode::kClipped ? Dtype::kF32
                                                                                               : compute_dtype());
  switch (mode_) {
    case SinkMode::kSum: matmul_tn(dW, G, A, out, in, N, true); break;
    case SinkMode::kUnitNorms: linear_unit_sq_norms(G, A, out, in, segs_, group_sq(), scratch_, scratch_floats_); break;
    case SinkMode::kClipped: linear_weighted_grad(dW, G, A, N, out, in, row_factors(N), scratch_); break;
    case SinkMode::kFrozen: break;
  }
}

void GradSink::rmsnorm_weight(float* dw, const float* dout, const float* x, const float* rstd, int N, int C) const {
  if (mode_ == SinkMode::kFrozen) return;
  if (mode_ == SinkMode::kUnitNorms) {
    double* sq = group_sq();
    for (const Segment& s : segs_) {
      double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static) if ((size_t)(s.end - s.begin) * C > kParallelMin)
      for (int c = 0; c < C; ++c) {
        float v = 0;
        for (int t = s.begin; t < s.end; ++t) v += dout[(size_t)t * C + c] * x[(size_t)t * C + c] * rstd[t];
        total += (double)v * v;
      }
      sq[s.unit] += total;
    }
    return;
  }
  const float* f = mode_ == SinkMode::kClipped ? row_factors(N) : nullptr;
  // Per channel, in row order: deterministic at any thread count. A task owns a block of
  // channels and walks the rows once, the block's sums in vector lanes.
  constexpr int kBlock = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kBlock) {
    const int w = std::min(kBlock, C - c0);
    float s[kBlock] = {};
    for (int t = 0; t < N; ++t) {
      const float* d = dout + (size_t)t * C + c0;
      const float* xt = x + (size_t)t * C + c0;
      const float r = rstd[t], ft = f ? f[t] : 1.0f;
#pragma omp simd
      for (int c = 0; c < w; ++c) s[c] += d[c] * xt[c] * r * ft;
    }
    for (int c = 0; c < w; ++c) dw[c0 + c] += s[c];
  }
}

void GradSink::embedding(float* dwte, const float* dout, const int32_t* tokens, int N, int C) const {
  if (mode_ == SinkMode::kFrozen) return;
  if (mode_ == SinkMode::kUnitNorms) {
    double* sq = group_sq();
    std::vector<int> rows;
    std::vector<float> acc(C);
    for (const Segment& s : segs_) {
      rows.resize(s.end - s.begin);
      for (int r = s.begin; r < s.end; ++r) rows[r - s.begin] = r;
      std::stable_sort(rows.begin(), rows.end(), [&](int a, int b) { return tokens[a] < tokens[b]; });
      double total = 0;
      for (size_t i = 0; i < rows.size();) {
        size_t j = i;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (; j < rows.size() && tokens[rows[j]] == tokens[rows[i]]; ++j)
          for (int c = 0; c < C; ++c) acc[c] += dout[(size_t)rows[j] * C + c];
        for (int c = 0; c < C; ++c) total += (double)acc[c] * acc[c];
        i = j;
      }
      sq[s.unit] += total;
    }
    return;
  }
  const float* f = mode_ == SinkMode::kClipped ? row_factors(N) : nullptr;
  // Split by blocks of channels: two rows with the same token never race, and sums run in row
  // order; a task walks the rows once, a block of each row at a time.
  constexpr int kBlock = 64;
#pragma omp parallel for schedule(static)
  for (int c0 = 0; c0 < C; c0 += kBlock) {
    const int w = std::min(kBlock, C - c0);
    for (int t = 0; t < N; ++t) {
      float* d = dwte + (size_t)tokens[t] * C + c0;
      const float* g = dout + (size_t)t * C + c0;
      if (f) {
        const float ft = f[t];
#pragma omp simd
        for (int c = 0; c < w; ++c) d[c] += ft * g[c];
      } else {
#pragma omp simd
        for (int c = 0; c < w; ++c) d[c] += g[c];
      }
    }
  }
}

}  // namespace pcmoe
