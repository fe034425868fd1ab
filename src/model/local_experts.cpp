#include "model/local_experts.h"

#include <cstring>
#include <stdexcept>

#include "model/layers.h"
#include "tensor/gemm.h"

namespace pcmoe {

LocalExperts::LocalExperts(const ModelConfig& cfg, ParamSet& params, int max_rows, bool per_unit, bool keep_inputs)
    : cfg_(cfg), params_(params), max_rows_(max_rows), per_unit_(per_unit),
      acts_(cfg, max_rows, per_unit, keep_inputs) {}

SwigluLora LocalExperts::adapters(int layer, int e) const {
  if (!lora_) return {};
  return {lora_->map(expert_param(layer, e, "w1")), lora_->map(expert_param(layer, e, "w3")),
          lora_->map(expert_param(layer, e, "w2"))};
}

void LocalExperts::forward(int layer, const int* offsets, const float* x, float* y) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  const int rows = offsets[cfg_.n_experts];
  if (rows > max_rows_) throw std::logic_error("more routed rows than the expert arena was planned for");
  const ComputeDtypeScope dtype(cfg_.compute_dtype);
  ExpertActivations::Saved& s = acts_.saved[layer];
  s.offsets.assign(offsets, offsets + cfg_.n_experts + 1);
  std::memcpy(s.x, x, (size_t)rows * C * sizeof(float));
  for (int e = 0; e < cfg_.n_experts; ++e) {
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    swiglu_forward(y + (size_t)r0 * C, s.g + (size_t)r0 * F, s.u + (size_t)r0 * F, acts_.act,
                   s.x + (size_t)r0 * C, params_.value(expert_param(layer, e, "w1")),
                   params_.value(expert_param(layer, e, "w3")),
                   params_.value(expert_param(layer, e, "w2")), n, C, F, adapters(layer, e));
  }
}

// Expert e's rows of the last forward of `layer`; dy and dx hold those rows only.
void LocalExperts::expert_backward(int layer, int e, const float* dy, float* dx, const GradSink& sink) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  const ComputeDtypeScope dtype(cfg_.compute_dtype);
  ExpertActivations::Saved& s = acts_.saved[layer];
  const int r0 = s.offsets[e], n = s.offsets[e + 1] - r0;
  float* g = s.g + (size_t)r0 * F;
  float* u = s.u + (size_t)r0 * F;
  swiglu_backward(dx, params_.grad(expert_param(layer, e, "w1")), params_.grad(expert_param(layer, e, "w3")),
                  params_.grad(expert_param(layer, e, "w2")), dy, g, u, acts_.act, acts_.dg ? acts_.dg : g, acts_.du ? acts_.du : u,
                  s.x + (size_t)r0 * C, params_.value(expert_param(layer, e, "w1")),
                  params_.value(expert_param(layer, e, "w3")), params_.value(expert_param(layer, e, "w2")), n,
                  C, F, sink, adapters(layer, e));
}

void LocalExperts::backward(int layer, const int* offsets, const float* dy, float* dx) {
  const int C = cfg_.d_model;
  acts_.check_rows(layer, offsets);
  for (int e = 0; e < cfg_.n_experts; ++e)
    if (offsets[e + 1] > offsets[e])
      expert_backward(layer, e, dy + (size_t)offsets[e] * C, dx + (size_t)offsets[e] * C,
                      lora_ ? GradSink::frozen() : GradSink{});
}

void LocalExperts::backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit,
                                       int n_units, float* dx, double* unit_sq) {
  if (!per_unit_) throw std::logic_error("per-unit gradients need LocalExperts planned with per_unit");
  if (lora_) throw std::logic_error("per-unit gradients of LoRA adapters are not implemented");
  const int C = cfg_.d_model;
  ExpertActivations::Saved& s = acts_.saved[layer];
  acts_.check_rows(layer, offsets);
  const int rows = offsets[cfg_.n_experts];
  std::memcpy(s.dy, dy, (size_t)rows * C * sizeof(float));
  std::memcpy(s.unit, unit, (size_t)rows * sizeof(int));
  s.n_units = n_units;
  for (int e = 0; e < cfg_.n_experts; ++e) {
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    const GradSink sink = GradSink::unit_norms(unit + r0, n, n_units, unit_sq, acts_.norm_scratch, acts_.norm_scratch_floats);
    expert_backward(layer, e, dy + (size_t)r0 * C, dx + (size_t)r0 * C, sink);
  }
}

void LocalExperts::add_clipped_grads(int layer, const float* factor) {
  if (!per_unit_) throw std::logic_error("per-unit gradients need LocalExperts planned with per_unit");
  const int C = cfg_.d_model;
  ExpertActivations::Saved& s = acts_.saved[layer];
  for (int e = 0; e < cfg_.n_experts; ++e) {
    const int r0 = s.offsets[e], n = s.offsets[e + 1] - r0;
    if (n == 0) continue;
    const GradSink sink = GradSink::clipped(s.unit + r0, n, s.n_units, factor, acts_.norm_scratch, acts_.norm_scratch_floats);
    expert_backward(layer, e, s.dy + (size_t)r0 * C, acts_.dx, sink);
  }
}

}  // namespace pcmoe
