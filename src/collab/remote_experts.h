// The ExpertBackend of a PC-MoE party: splits an MoE layer's grouped rows by hosting party and
// sends each host only the rows routed to its own experts, with the count per hosted expert.
//
// Expert call wire format (little-endian; the same for forward and backward; written and read
// by src/collab/expert_wire.cpp):
//   request : u32 layer, u32 k = number of experts the host holds, k x u32 rows per hosted
//             expert (ascending expert id), then sum(rows) x d_model floats (hidden states on
//             forward, gradients of the expert outputs on backward)
//   response: sum(rows) x d_model floats (expert outputs on forward, input gradients on backward)
// The floats are f32, or bf16 / fp16 (2 bytes, round to nearest even) as collab.wire_dtype says;
// both sides compute in fp32.
// Hosts with no routed row in a layer are not called.
//
// DP-SGD (MsgKind::kExpertBackwardUnits), pass 1 of a per-unit clipped backward:
//   request : u32 layer, u32 k, k x u32 rows (as above), u32 n_units, sum(rows) x u32 unit of
//             each row (ascending within each expert), then sum(rows) x d_model f32 gradients
//   response: sum(rows) x d_model f32 input gradients, then n_units x f64: each unit's squared
//             gradient norm over the host's experts of this layer
// Pass 2 is a control message (ControlOp::kClipFactors: the factor of each unit), sent to the
// hosts called in pass 1.
#pragma once
#include <memory>
#include <vector>

#include "collab/expert_wire.h"
#include "collab/transport.h"
#include "model/config.h"
#include "model/expert_backend.h"
#include "privacy/noise.h"

namespace pcmoe {

class RemoteExperts final : public ExpertBackend {
 public:
  RemoteExperts(const ModelConfig& cfg, Transport& transport, int party, int n_parties,
                WireDtype wire = WireDtype::kF32);
  void forward(int layer, const int* offsets, const float* x, float* y) override;
  void backward(int layer, const int* offsets, const float* dy, float* dx) override;
  void backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit, int n_units,
                           float* dx, double* unit_sq) override;
  void add_clipped_grads(int layer, const float* factor) override;
  // Defence against curious hosts (collab.state_noise): every hidden-state row sent to another
  // party's experts gets Gaussian noise of std rel_std x the row's RMS; the party's own experts
  // get the exact rows. Backward follows the noisy forward (the hosts' gradients are taken there).
  void set_state_noise(double rel_std, NoiseSource source);

 private:
  // One call per host with routed rows (with each row's unit, and the units' squared norms back,
  // when `unit` is given); returns the hosts called.
  std::vector<int> exchange(MsgKind kind, int layer, const int* offsets, const float* in, float* out,
                            const int* unit = nullptr, int n_units = 0, double* unit_sq = nullptr);
  ModelConfig cfg_;
  Transport& transport_;
  int party_, n_parties_;
  WireDtype wire_;
  std::vector<std::vector<int>> units_called_;  // per layer: hosts called by the last pass 1
  std::vector<int> n_units_;                    // per layer: units of the last pass 1
  double state_noise_ = 0;
  std::unique_ptr<NoiseSource> state_noise_source_;
  std::vector<float> noisy_;  // the rows of one forward call, with their noise
};

}  // namespace pcmoe
