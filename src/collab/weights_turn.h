// collab.exchange "weights": no hidden state and no output gradient leaves the data owner. For
// each MoE layer the owner fetches the weights of every expert (routed to or not, so the fetches
// say nothing of its routing) from their hosts, one expert at a time, runs the experts itself,
// and sends each host the gradient sum of each of its experts (message formats in
// src/collab/weights_wire.h). Hosts keep their experts' weights and AdamW state and step them
// as in the activations exchange; the turn's other messages (begin, gradient norms, update) are
// the same.
//
// Streaming: the owner holds one expert's weights at a time, and with one micro-batch per turn
// (train.grad_accum 1, no DP-SGD) one expert's gradients, sent as soon as its backward is done.
// A turn of several micro-batches (grad_accum > 1, or DP-SGD, whose Poisson batch may fill
// several) holds every expert's gradient sum until the turn's backward ends, so that each sum
// leaves once: under DP-SGD clipped per unit and noised here, so the party's (ε, δ) covers it.
#pragma once
#include <vector>

#include "collab/transport.h"
#include "collab/weights_wire.h"
#include "model/config.h"
#include "model/expert_activations.h"
#include "model/expert_backend.h"
#include "model/per_unit.h"
#include "privacy/noise.h"
#include "tensor/buffer.h"

namespace pcmoe {

class WeightsExchange final : public ExpertBackend {
 public:
  // max_rows: the most routed rows of one MoE layer in one call (micro-batch tokens x top_k);
  // per_unit: plan DP-SGD's two passes; hold_turn_grads: keep every expert's gradient sum until
  // send_held_grads (see above).
  WeightsExchange(const ModelConfig& cfg, Transport& transport, int party, int n_parties, int max_rows, bool per_unit,
                  bool hold_turn_grads, WireDtype wire);
  void forward(int layer, const int* offsets, const float* x, float* y) override;
  void backward(int layer, const int* offsets, const float* dy, float* dx) override;
  void backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit, int n_units, float* dx,
                           double* unit_sq) override;
  void add_clipped_grads(int layer, const float* factor) override;

  // A turn begins: the held gradient sums start from zero.
  void begin_turn();
  // After the turn's backward: sends each host the held gradient sum of each of its experts,
  // after adding std x N(0, 1) to every coordinate when `noise` is given (DP-SGD). Without held
  // sums there is nothing left to send.
  void send_held_grads(NoiseSource* noise, double std);
  bool holds_turn_grads() const { return held_ != nullptr; }

  size_t activation_bytes() const { return acts_.bytes(); }
  // The fetched expert's weights and the gradients held (one expert's, or every expert's).
  size_t exchange_bytes() const { return bufs_.bytes(); }

 private:
  void fetch(int layer, int e);
  float* grad_of(int layer, int e);  // where expert e's gradient sum of this turn accumulates
  void send_grads(int layer, int e, const float* g);
  void expert_backward(int layer, int e, const float* dy, float* dx, const GradSink& sink);

  const ModelConfig cfg_;
  Transport& transport_;
  int party_, n_parties_, max_rows_;
  bool per_unit_;
  WireDtype wire_;
  std::vector<int> moe_index_;  // layer -> its index among the MoE layers (-1: dense)
  float *w1_ = nullptr, *w3_ = nullptr, *w2_ = nullptr;  // the fetched expert, [F,C], [F,C], [C,F]
  float* grad_ = nullptr;                                // one expert's gradients (streamed)
  ExpertActivations acts_;  // as a host's LocalExperts plans them for one party's calls
  AlignedBuffer bufs_;
  float* held_ = nullptr;  // hold_turn_grads: [moe layers][n_experts][w1, w3, w2]
  size_t held_floats_ = 0;
};

}  // namespace pcmoe
