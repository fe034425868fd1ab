// Per-unit weight gradients for DP-SGD (docs/privacy.md). A privacy unit owns whole rows of a
// batch; its gradient of a weight is the sum of its rows' contributions. DP-SGD needs, for every
// unit, the norm of that sum (to clip it) and then the sum over units weighted by the clip
// factors. A GradSink is where a layer sends its weight gradients, so one backward serves all
// three uses: plain sums (ordinary training), per-unit squared norms (DP pass 1) and per-unit
// weighted sums (DP pass 2).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pcmoe {

// Rows begin..end-1 all belong to `unit`.
struct Segment {
  int begin, end, unit;
};
// The runs of equal units in unit[0..n-1]; throws std::logic_error when a unit's rows are not
// contiguous.
std::vector<Segment> unit_segments(const int* unit, int n);

// Adds to unit_sq[seg.unit], for every segment, ‖Σ_{r∈seg} g_r a_rᵀ‖² with G[N,out], A[N,in]:
// by Gram matrices, Σ_{r,s}(a_r·a_s)(g_r·g_s) ("ghost norm", n²(out+in) flops), or by forming
// the segment's out×in gradient (n·out·in flops), whichever costs less and fits in `scratch`.
void linear_unit_sq_norms(const float* G, const float* A, int out, int in,
                          const std::vector<Segment>& segs, double* unit_sq, float* scratch,
                          size_t scratch_floats);
// dW[out,in] += Σ_r f_r g_r a_rᵀ. Scratch: N·min(out,in) floats.
void linear_weighted_grad(float* dW, const float* G, const float* A, int N, int out, int in,
                          const float* f, float* scratch);

enum class SinkMode { kSum, kUnitNorms, kClipped, kFrozen };

class GradSink {
 public:
  // Ordinary training: gradients are summed over rows.
  GradSink() = default;
  // DP pass 1: token_unit[N] gives each row's unit; each parameter group's per-unit squared
  // norms go to unit_sq[group * n_units + unit]. No gradient is touched.
  static GradSink unit_norms(const int* token_unit, int N, int n_units, double* unit_sq, float* scratch,
                             size_t scratch_floats);
  // Frozen weights (LoRA's base model): no weight gradient is formed; input gradients still flow.
  static GradSink frozen();
  // DP pass 2: gradients += Σ_u factor[group * n_units + u] · (unit u's gradient).
  static GradSink clipped(const int* token_unit, int N, int n_units, const float* factor, float* scratch,
                          size_t scratch_floats);

  SinkMode mode() const { return mode_; }
  void set_group(int g) { group_ = g; }
  int n_units() const { return n_units_; }
  const int* token_unit() const { return token_unit_; }
  double* group_sq() const { return unit_sq_ + (size_t)group_ * n_units_; }
  const float* group_factor() const { return factor_ + (size_t)group_ * n_units_; }
  const std::vector<Segment>& segments() const { return segs_; }
  float* scratch() const { return scratch_; }
  size_t scratch_floats() const { return scratch_floats_; }

  // dW[out,in] += Σ_r g_r a_rᵀ over the N rows of G[N,out], A[N,in].
  void linear(float* dW, const float* G, const float* A, int N, int out, int in) const;
  // RMSNorm weight: dw[c] += Σ_r dout[r,c] x[r,c] rstd[r].
  void rmsnorm_weight(float* dw, const float* dout, const float* x, const float* rstd, int N, int C) const;
  // Embedding rows: dwte[tokens[r]] += dout[r] (untied embedding's per-unit norms; a tied one's
  // norm also needs the head, see Model).
  void embedding(float* dwte, const float* dout, const int32_t* tokens, int N, int C) const;

 private:
  GradSink(SinkMode mode, const int* token_unit, int N, int n_units, float* scratch, size_t scratch_floats);
  const float* row_factors(int N) const;  // kClipped: f_r = factor of row r's unit, this group
  SinkMode mode_ = SinkMode::kSum;
  const int* token_unit_ = nullptr;
  int n_units_ = 0, group_ = 0;
  double* unit_sq_ = nullptr;
  const float* factor_ = nullptr;
  float* scratch_ = nullptr;
  size_t scratch_floats_ = 0;
  std::vector<Segment> segs_;
  mutable std::vector<float> row_f_;
};

}  // namespace pcmoe
