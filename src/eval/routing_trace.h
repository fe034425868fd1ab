// The routing-trace attack of the leakage audit (docs/audit.md): an expert host links a
// victim's rows across the MoE layers of one call, then reads the token off the tuple of its
// experts that chose it at each linked layer.
//
// An expert request carries no token index: only the rows grouped by expert (expert_wire.h),
// each group in the order of the sender's batch. The host links them by that order and by the
// residual stream: a row's place within its group, as a fraction of the group, is close to its
// token's place in the batch at every layer; and the state a layer sends is the previous layer's
// plus the updates of one block. So a row's nearest (cosine) row among the previous layer's rows
// of the same call, within a band of places, is, above some similarity, the same token. The
// band, the threshold and the table P(token | expert tuple) are fitted on the attacker's own
// public text, routed and linked exactly as the victims' rows are.
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
  std::vector<float> place;     // (k + 0.5) / group size: the row is k-th of its first expert's group
  std::vector<int32_t> token;   // scoring only: the token
  std::vector<int> position;    // scoring only: the token's row in the sender's batch
  int n() const { return (int)code.size(); }
};
// One call's rows at each MoE layer, in layer order.
using Trace = std::vector<LayerRows>;

// For each row of `next`, the row of `prev` with the highest cosine among those whose place is
// within `band` of its own, that cosine, and (from the positions, for scoring and fitting only)
// the true partner or -1 when the token is not in prev.
struct LinkCandidates {
  std::vector<int> best, truth;
  std::vector<float> cosine;
};
LinkCandidates nearest_previous(const LayerRows& prev, const LayerRows& next, int C, float band);
// The band of places that holds the true links between layers m-1 and m of `traces` (public text).
float fit_place_band(const std::vector<Trace>& traces, int m);

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
// chain reached and their codes. The estimate backs off by dropping the linked layer farthest
// from the scored one, down to the scored layer alone: a tuple never seen on public text gives
// the shorter tuple's distribution, a rare one mostly that.
class RouteTable {
 public:
  RouteTable(int n_layers, int vocab) : L_(n_layers), V_(vocab) {}
  // Linking between layers m-1 and m: rows within bands[m] places, above cosine thresholds[m].
  struct Linking {
    std::vector<float> bands, thresholds;
  };
  // Every row of a trace.
  void add(const Trace& t, const Linking& link, int C);
  // Scores [rows of layer m, V] of each trace row's token (layer m's rows in order).
  std::vector<float> scores(const Trace& t, const Linking& link, int C, int m) const;

 private:
  // Per layer m and row: its keys, from its whole chain down to layer m alone. A key is
  // (m, per layer: the linked row's code, 0 where the chain has no row, -1 where backed off).
  std::vector<std::vector<std::vector<std::vector<int>>>> keys(const Trace& t, const Linking& link, int C) const;
  static constexpr double kPrior = 10;
  int L_, V_;
  std::map<std::vector<int>, std::map<int32_t, int64_t>> counts_;
};

}  // namespace pcmoe::eval
