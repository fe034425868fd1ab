// What the audit's attacker holds and what the scorer knows of it, per recorded round
// (docs/audit.md): the rows its host received from the victims (with their truth, for scoring
// only), and its own public text routed through its view of the model.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "collab/recorder.h"
#include "collab/run_config.h"
#include "eval/routing_trace.h"
#include "eval/secrets.h"

namespace pcmoe::eval {

// Rows of one MoE layer with what scores them: the hidden state, the gradient direction (unit
// norm, times sqrt(d): the gate's scale is not information about the token), the row's expert,
// its input token and its target.
struct Rows {
  std::vector<float> state, grad;
  std::vector<int32_t> input, target;
  std::vector<int> expert;
  // The victims' rows only: where each token sits in its sender's batch (the scorer's, from
  // truth.bin) and the expert group it arrived in (record index x n_experts + expert).
  std::vector<Slot> input_at, target_at;
  std::vector<int64_t> input_group, target_group;
  int n() const { return (int)input.size(); }
};

// Scales v[C] to norm sqrt(C).
void unit_scale(float* v, int C);
// The MoE layers of a model, in order.
std::vector<int> moe_layers(const ModelConfig& mc);

// The attacker's view of round `round`: its model, and public text through it. Per MoE layer,
// one row per token (its first choice) and the (expert, token) counts of every choice; per batch,
// the trace its own host would have received of that text.
struct PublicView {
  std::vector<float> wte;                                // [V, C] the attacker's embedding
  std::map<int, Rows> rows;                              // per MoE layer
  std::map<int, std::vector<std::vector<int64_t>>> routed;  // per MoE layer: [expert][token] counts
  std::vector<Trace> traces;
};

PublicView public_view(const RunConfig& cfg, const std::string& view_dir, const std::vector<int32_t>& windows,
                       int n_windows, const std::vector<int>& hosted);

// What the observer received from the victims in one round, per MoE layer.
std::map<int, Rows> victim_rows(const RunConfig& cfg, const Recording& rec, int64_t round);

// The victims' forward calls of one round as traces: a sender's k-th call at each MoE layer
// belongs to its k-th trace (the order in which the host received them). A token routed to two
// of the host's experts arrives twice with the same state and is one row of the trace.
std::vector<Trace> victim_traces(const RunConfig& cfg, const Recording& rec, int64_t round);

}  // namespace pcmoe::eval
