#include "collab/weights_turn.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "collab/expert_host.h"
#include "model/layers.h"
#include "model/per_unit.h"
#include "tensor/arena.h"

namespace pcmoe {

WeightsExchange::WeightsExchange(const ModelConfig& cfg, Transport& transport, int party, int n_parties, int max_rows,
                                 bool per_unit, bool hold_turn_grads, WireDtype wire)
    : cfg_(cfg), transport_(transport), party_(party), n_parties_(n_parties), max_rows_(max_rows), per_unit_(per_unit),
      wire_(wire), moe_index_(cfg.n_layers, -1), acts_(cfg, max_rows, per_unit, false) {
  int moe_layers = 0;
  for (int l = 0; l < cfg.n_layers; ++l)
    if (cfg.is_moe(l)) moe_index_[l] = moe_layers++;
  const size_t C = cfg.d_model, F = cfg.d_ff;
  held_floats_ = hold_turn_grads ? (size_t)moe_layers * cfg.n_experts * expert_floats(cfg) : 0;
  plan_and_place(bufs_, [&](Arena& a) {
    w1_ = a.take<float>(F * C);
    w3_ = a.take<float>(F * C);
    w2_ = a.take<float>(C * F);
    if (hold_turn_grads) held_ = a.take<float>(held_floats_);
    else grad_ = a.take<float>(expert_floats(cfg));
  });
}

void WeightsExchange::fetch(int layer, int e) {
  const Bytes reply = transport_.call(party_, host_of(e, n_parties_), MsgKind::kExpertWeights,
                                      encode_weights_request(layer, e));
  decode_weights_reply(reply, cfg_, wire_, w1_, w3_, w2_);
}

float* WeightsExchange::grad_of(int layer, int e) {
  if (!held_) return grad_;
  return held_ + ((size_t)moe_index_[layer] * cfg_.n_experts + e) * expert_floats(cfg_);
}

void WeightsExchange::send_grads(int layer, int e, const float* g) {
  const size_t fc = (size_t)cfg_.d_ff * cfg_.d_model;
  const ExpertRef ref{layer, e};
  const Bytes reply = transport_.call(party_, host_of(e, n_parties_), MsgKind::kExpertGrads,
                                      encode_expert_floats(g, g + fc, g + 2 * fc, cfg_, wire_, &ref));
  Reader(reply).expect_end();
}

void WeightsExchange::forward(int layer, const int* offsets, const float* x, float* y) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  const int rows = offsets[cfg_.n_experts];
  if (rows > max_rows_) throw std::logic_error("more routed rows than the expert arena was planned for");
  ExpertActivations::Saved& s = acts_.saved[layer];
  s.offsets.assign(offsets, offsets + cfg_.n_experts + 1);
  std::memcpy(s.x, x, (size_t)rows * C * sizeof(float));
  for (int e = 0; e < cfg_.n_experts; ++e) {
    fetch(layer, e);  // routed to or not
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    swiglu_forward(y + (size_t)r0 * C, s.g + (size_t)r0 * F, s.u + (size_t)r0 * F, acts_.act, s.x + (size_t)r0 * C, w1_,
                   w3_, w2_, n, C, F);
  }
}

// Expert e's rows of the last forward of `layer` (its weights fetched); dy and dx hold those rows
// only. The weight gradients go to grad_of(layer, e) through the sink.
void WeightsExchange::expert_backward(int layer, int e, const float* dy, float* dx, const GradSink& sink) {
  const int C = cfg_.d_model, F = cfg_.d_ff;
  const size_t fc = (size_t)F * C;
  ExpertActivations::Saved& s = acts_.saved[layer];
  const int r0 = s.offsets[e], n = s.offsets[e + 1] - r0;
  float* g = s.g + (size_t)r0 * F;
  float* u = s.u + (size_t)r0 * F;
  float* grad = grad_of(layer, e);
  swiglu_backward(dx, grad, grad + fc, grad + 2 * fc, dy, g, u, acts_.act, acts_.dg ? acts_.dg : g, acts_.du ? acts_.du : u,
                  s.x + (size_t)r0 * C, w1_, w3_, w2_, n, C, F, sink);
}

void WeightsExchange::backward(int layer, const int* offsets, const float* dy, float* dx) {
  acts_.check_rows(layer, offsets);
  const int C = cfg_.d_model;
  for (int e = 0; e < cfg_.n_experts; ++e) {
    fetch(layer, e);
    if (!held_) std::fill_n(grad_, expert_floats(cfg_), 0.0f);
    if (offsets[e + 1] > offsets[e])
      expert_backward(layer, e, dy + (size_t)offsets[e] * C, dx + (size_t)offsets[e] * C, GradSink{});
    if (!held_) send_grads(layer, e, grad_);  // routed to or not: a zero sum says it was not
  }
}

void WeightsExchange::backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit,
                                          int n_units, float* dx, double* unit_sq) {
  if (!per_unit_ || !held_) throw std::logic_error("per-unit gradients need WeightsExchange planned for DP-SGD");
  acts_.check_rows(layer, offsets);
  const int C = cfg_.d_model;
  ExpertActivations::Saved& s = acts_.saved[layer];
  const int rows = offsets[cfg_.n_experts];
  std::memcpy(s.dy, dy, (size_t)rows * C * sizeof(float));
  std::memcpy(s.unit, unit, (size_t)rows * sizeof(int));
  s.n_units = n_units;
  for (int e = 0; e < cfg_.n_experts; ++e) {
    fetch(layer, e);
    const int r0 = offsets[e], n = offsets[e + 1] - r0;
    if (n == 0) continue;
    const GradSink sink = GradSink::unit_norms(unit + r0, n, n_units, unit_sq, acts_.norm_scratch, acts_.norm_scratch_floats);
    expert_backward(layer, e, dy + (size_t)r0 * C, dx + (size_t)r0 * C, sink);
  }
}

void WeightsExchange::add_clipped_grads(int layer, const float* factor) {
  if (!per_unit_ || !held_) throw std::logic_error("per-unit gradients need WeightsExchange planned for DP-SGD");
  const int C = cfg_.d_model;
  ExpertActivations::Saved& s = acts_.saved[layer];
  for (int e = 0; e < cfg_.n_experts; ++e) {
    fetch(layer, e);
    const int r0 = s.offsets[e], n = s.offsets[e + 1] - r0;
    if (n == 0) continue;
    const GradSink sink = GradSink::clipped(s.unit + r0, n, s.n_units, factor, acts_.norm_scratch, acts_.norm_scratch_floats);
    expert_backward(layer, e, s.dy + (size_t)r0 * C, acts_.dx, sink);
  }
}

void WeightsExchange::begin_turn() {
  if (held_) std::fill_n(held_, held_floats_, 0.0f);
}

void WeightsExchange::send_held_grads(NoiseSource* noise, double std) {
  if (!held_) return;
  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (!cfg_.is_moe(l)) continue;
    for (int e = 0; e < cfg_.n_experts; ++e) {
      float* g = grad_of(l, e);
      if (noise) noise->add_gaussian(g, expert_floats(cfg_), std);  // every sum, routed to or not
      send_grads(l, e, g);
    }
  }
}

}  // namespace pcmoe
