// A party's expert shard as a service: expert e of every MoE layer lives on party e mod n. The
// host runs forward and backward on the hidden states a party sends, accumulates its experts'
// gradients over that party's batch, and steps its own AdamW state when the party says so.
#pragma once
#include <vector>

#include "collab/transport.h"
#include "model/local_experts.h"
#include "model/params.h"
#include "train/adamw.h"

namespace pcmoe {

// Experts of one MoE layer that party `party` of `n_parties` hosts: party, party + n, ...
std::vector<int> hosted_experts(int n_experts, int party, int n_parties);
inline int host_of(int expert, int n_parties) { return expert % n_parties; }
// The parameters party `party` hosts: its experts of every MoE layer, no backbone.
ParamSelection shard_selection(int party, int n_parties);

// Control operations (MsgKind::kControl), first u32 of the request.
enum class ControlOp : uint32_t {
  kBeginTurn = 1,    // zero the shard's gradients: a party's batch starts
  kGradSqSums = 2,   // reply: per-tensor sums of squared gradients (f64 each, layout order)
  kApplyUpdate = 3,  // f32 clip coefficient, f32 lr: scale gradients, step AdamW
};

class ExpertHost {
 public:
  // max_rows: the most routed rows one call may carry (a party's micro-batch tokens x top_k).
  ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows);
  // Serves one request; throws std::runtime_error on a malformed one, with no state change.
  Bytes handle(MsgKind kind, int from, const Bytes& request);

  ParamSet& params() { return shard_; }
  const ParamSet& params() const { return shard_; }
  const AdamW& optimizer() const { return opt_; }
  AdamW& optimizer() { return opt_; }  // to restore a checkpoint
  size_t activation_bytes() const { return compute_.activation_bytes(); }

 private:
  Bytes expert_call(bool forward, const Bytes& request);
  Bytes control(const Bytes& request);

  ModelConfig cfg_;
  int party_;
  std::vector<int> local_;  // hosted expert ids (the same in every MoE layer)
  ParamSet shard_;
  LocalExperts compute_;
  AdamW opt_;
  std::vector<std::vector<int>> forward_offsets_;  // per layer: offsets of the last forward
  std::vector<float> rows_in_;
};

}  // namespace pcmoe
