#include "model/local_experts.h"

#include <cstring>
#include <stdexcept>

#include "model/layers.h"
#include "tensor/arena.h"

namespace pcmoe {

LocalExperts::LocalExperts(const ModelConfig& cfg, ParamSet& params, int max_rows)
    : cfg_(cfg), params_(params), max_rows_(max_rows), saved_(cfg.n_layers) {
  const size_t C = cfg.d_model, F = cfg.d_ff, R = max_rows;
  plan_and_place(acts_, [&](Arena& a) {
    for (int l = 0; l < cfg.n_layers; ++l) {
      if (!cfg.is_moe(l)) continue;
      saved_[l] = {a.take<float>(R * C), a.take<float>(R * F), a.take<float>(R * F)};
    }
    scratch_ = a.take<float>(R * F);
  });
}

void LocalExperts::forward(int layer, const int* offsets, const float* x, float* y) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  const int rows = offsets[cfg_.n_experts];
  if (rows > max_rows_) throw std::logic_error("more routed rows than the expert arena was planned for");
  Saved& s = saved_[layer];
  std::memcpy(s.x, x, (size_t)rows * C * sizeof(float));
  for (int e = 0; e < cfg_.n_experts; ++e) {
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    swiglu_forward(y + (size_t)r0 * C, s.g + (size_t)r0 * F, s.u + (size_t)r0 * F, scratch_,
                   s.x + (size_t)r0 * C, params_.value(expert_param(layer, e, "w1")),
                   params_.value(expert_param(layer, e, "w3")),
                   params_.value(expert_param(layer, e, "w2")), n, C, F);
  }
}

void LocalExperts::backward(int layer, const int* offsets, const float* dy, float* dx) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  Saved& s = saved_[layer];
  for (int e = 0; e < cfg_.n_experts; ++e) {
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    swiglu_backward(dx + (size_t)r0 * C, params_.grad(expert_param(layer, e, "w1")),
                    params_.grad(expert_param(layer, e, "w3")),
                    params_.grad(expert_param(layer, e, "w2")), dy + (size_t)r0 * C,
                    s.g + (size_t)r0 * F, s.u + (size_t)r0 * F, scratch_, s.x + (size_t)r0 * C,
                    params_.value(expert_param(layer, e, "w1")),
                    params_.value(expert_param(layer, e, "w3")),
                    params_.value(expert_param(layer, e, "w2")), n, C, F);
  }
}

}  // namespace pcmoe
