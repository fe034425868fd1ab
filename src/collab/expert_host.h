// A party's expert shard as a service: expert e of every MoE layer lives on party e mod n. The
// host runs forward and backward on the hidden states a party sends, accumulates its experts'
// gradients over that party's batch, and steps its own AdamW state when the party says so.
#pragma once
#include <memory>
#include <vector>

#include "collab/expert_wire.h"
#include "collab/transport.h"
#include "model/local_experts.h"
#include "model/params.h"
#include "privacy/noise.h"
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
  // DP-SGD (docs/privacy.md)
  kClipFactors = 4,  // u32 layer, u32 n_units, n_units x f32: add the units' clipped gradient sum
                     // of that layer's experts (rows of the last kExpertBackwardUnits)
  kApplyNoisyUpdate = 5,  // f32 noise std, f32 scale, f32 lr, u64 noise stream: add Gaussian noise
                          // to every gradient coordinate of the shard, scale, step AdamW
};

// What a host needs for DP-SGD turns.
struct HostPrivacy {
  bool per_unit = false;       // serve kExpertBackwardUnits and kClipFactors
  bool seeded = false;     // noise from (test_seed, stream) instead of the secure source (tests)
  uint64_t test_seed = 0;
};

class ExpertHost {
 public:
  // max_rows: the most routed rows one call may carry (a party's micro-batch tokens x top_k).
  // wire: the dtype of the rows of expert calls and their replies (collab.wire_dtype).
  ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows,
             const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32);
  // Serves one request; throws std::runtime_error on a malformed one, with no state change.
  Bytes handle(MsgKind kind, int from, const Bytes& request);

  ParamSet& params() { return shard_; }
  const ParamSet& params() const { return shard_; }
  const AdamW& optimizer() const { return opt_; }
  AdamW& optimizer() { return opt_; }  // to restore a checkpoint
  size_t activation_bytes() const { return compute_.activation_bytes(); }

 private:
  enum class Call { kForward, kBackward, kBackwardUnits };
  Bytes expert_call(Call call, MsgKind kind, const Bytes& request);
  Bytes control(const Bytes& request);
  void add_noise(float std, uint64_t stream);

  ModelConfig cfg_;
  int party_;
  WireDtype wire_;
  std::vector<int> local_;  // hosted expert ids (the same in every MoE layer)
  ParamSet shard_;
  LocalExperts compute_;
  AdamW opt_;
  std::vector<std::vector<int>> forward_offsets_;  // per layer: offsets of the last forward
  ExpertRequest in_;  // the last expert call (its buffers reused)
  std::vector<float> out_;  // its results in fp32, before they are encoded for the wire
  HostPrivacy privacy_;
  std::vector<int> n_units_;  // per layer: units of the last kExpertBackwardUnits (0: none)
  std::unique_ptr<NoiseSource> noise_;  // the secure source, when not seeded
};

}  // namespace pcmoe
