// The routing-trace attack of the leakage audit (docs/audit.md): an expert host links a
// victim's rows across the MoE layers of one call, then reads the token off the tuple of its
// experts that chose it at each linked layer.
//
// An expert request carries no token index: only the rows grouped by expert (expert_wire.h). The
// host links them by the residual stream instead: the state a layer sends is the previous
// layer's plus the small updates of one block, so a row's nearest (cosine) row among the
// previous layer's rows of the same call is, above some similarity, the same token. The
// threshold and the table P(token | expert tuple) are fitted on the attacker's own public text,
// routed and linked exactly as the victims' rows are.
#pragma once
#include <cstdint>
#include <map>
#include <vector>

namespace pcmoe::eval {

// What a host received at one MoE layer in one call, one entry per distinct token: a token that
// both of the host's experts chose arrives twice with the same state and counts once.
struct LayerRows {
  std::vector<float> state;     // [n, C]
  std::vector<int> code;        // bit h set: the host's h-th expert chose the token
  std::vector<int32_t> token;   // scoring only: the token
  std::vector<int> position;    // scoring only: the token's row in the sender's batch
  int n() const { return (int)code.size(); }
};
// One call's rows at each MoE layer, in layer order.
using Trace = std::vector<LayerRows>;

// For each row of `next`, the row of `prev` with the highest cosine, its cosine, and (from the
// positions, for scoring and fitting only) the true partner or -1 when the token is not in prev.
struct LinkCandidates {
  std::vector<int> best, truth;
  std::vector<float> cosine;
};
LinkCandidates nearest_previous(const LayerRows& prev, const LayerRows& next, int C);

// Decisions "link iff cosine >= threshold", scored: a right decision links a row to its true
// partner, or leaves a row without one unlinked.
struct LinkScore {
  double accuracy = 0;   // right decisions / rows
  double baseline = 0;   // the best constant decision (link nothing): rows without a partner / rows
  double precision = 0;  // right links / links made
  double recall = 0;     // right links / rows with a partner
  int64_t rows = 0;
};
LinkScore score_links(const LinkCandidates& c, float threshold);
// The threshold with the most right decisions on candidates whose truth is known (public text).
float fit_link_threshold(const LinkCandidates& c);

// P(token | the host's experts at each linked layer): keyed by the scored layer, the layers its
// chain reached and their codes. A row whose exact tuple was never seen on public text backs off
// by dropping the linked layer farthest from the scored one, down to the scored layer alone.
class RouteTable {
 public:
  RouteTable(int n_layers, int vocab) : L_(n_layers), V_(vocab) {}
  // Every row of a trace, linked with thresholds[m] between layers m-1 and m.
  void add(const Trace& t, const std::vector<float>& thresholds, int C);
  // Scores [rows of layer m, V] of each trace row's token (layer m's rows in order).
  std::vector<float> scores(const Trace& t, const std::vector<float>& thresholds, int C, int m) const;

 private:
  // Per layer m and row: its keys, from its whole chain down to layer m alone. A key is
  // (m, per layer: the linked row's code, 0 where the chain has no row, -1 where backed off).
  std::vector<std::vector<std::vector<std::vector<int>>>> keys(const Trace& t, const std::vector<float>& thresholds,
                                                               int C) const;
  int L_, V_;
  std::map<std::vector<int>, std::map<int32_t, int64_t>> counts_;
};

}  // namespace pcmoe::eval
