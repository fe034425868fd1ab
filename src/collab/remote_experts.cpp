#include "collab/remote_experts.h"

#include <algorithm>
#include <cmath>

#include "collab/expert_host.h"
#include "collab/expert_wire.h"

namespace pcmoe {

RemoteExperts::RemoteExperts(const ModelConfig& cfg, Transport& transport, int party, int n_parties, WireDtype wire)
    : cfg_(cfg), transport_(transport), party_(party), n_parties_(n_parties), wire_(wire), units_called_(cfg.n_layers),
      n_units_(cfg.n_layers, 0) {}

void RemoteExperts::forward(int layer, const int* offsets, const float* x, float* y) {
  exchange(MsgKind::kExpertForward, layer, offsets, x, y);
}

void RemoteExperts::backward(int layer, const int* offsets, const float* dy, float* dx) {
  exchange(MsgKind::kExpertBackward, layer, offsets, dy, dx);
}

void RemoteExperts::backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit,
                                        int n_units, float* dx, double* unit_sq) {
  n_units_[layer] = n_units;
  units_called_[layer] = exchange(MsgKind::kExpertBackwardUnits, layer, offsets, dy, dx, unit, n_units, unit_sq);
}

void RemoteExperts::add_clipped_grads(int layer, const float* factor) {
  for (int h : units_called_[layer]) {
    Writer w;
    w.u32(static_cast<uint32_t>(ControlOp::kClipFactors));
    w.u32((uint32_t)layer);
    w.u32((uint32_t)n_units_[layer]);
    w.floats(factor, n_units_[layer]);
    const Bytes reply = transport_.call(party_, h, MsgKind::kControl, w.take());
    Reader(reply).expect_end();
  }
}

void RemoteExperts::set_state_noise(double rel_std, NoiseSource source) {
  state_noise_ = rel_std;
  state_noise_source_ = std::make_unique<NoiseSource>(std::move(source));
}

std::vector<int> RemoteExperts::exchange(MsgKind kind, int layer, const int* offsets, const float* in, float* out,
                                         const int* unit, int n_units, double* unit_sq) {
  const size_t C = cfg_.d_model;
  std::vector<int> called;
  for (int h = 0; h < n_parties_; ++h) {
    const std::vector<int> experts = hosted_experts(cfg_.n_experts, h, n_parties_);
    size_t rows = 0;
    for (int e : experts) rows += offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const float* rows_in = in;
    if (kind == MsgKind::kExpertForward && h != party_ && state_noise_ > 0) {
      noisy_.resize((size_t)offsets[cfg_.n_experts] * C);
      for (int e : experts)
        for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
          float* row = noisy_.data() + r * C;
          std::copy_n(in + r * C, C, row);
          double ss = 0;
          for (size_t c = 0; c < C; ++c) ss += (double)row[c] * row[c];
          state_noise_source_->add_gaussian(row, C, state_noise_ * std::sqrt(ss / C));
        }
      rows_in = noisy_.data();
    }
    const Bytes reply = transport_.call(party_, h, kind,
                                        encode_expert_request(kind, cfg_, layer, experts, offsets, rows_in, unit, n_units, wire_));
    decode_expert_reply(reply, cfg_, experts, offsets, out, unit_sq, unit ? n_units : 0, wire_);
    called.push_back(h);
  }
  return called;
}

}  // namespace pcmoe
