// A party's expert shard as a service: expert e of every MoE layer lives on party e mod n. The
// host runs forward and backward on the hidden states a party sends, accumulates its experts'
// gradients over that party's batch, and steps its own AdamW state when the party says so.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "collab/expert_wire.h"
#include "collab/transport.h"
#include "collab/weights_wire.h"
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

// Control operations (MsgKind::kControl), first u32 of the request. A turn's calls come from the
// party that holds it, in this order: kBeginTurn; expert calls (each MoE layer's forward, then its
// backward; DP-SGD: its per-unit backward, then kClipFactors; collab.exchange "weights": weight
// fetches and each hosted expert's gradient sum, once); then kGradSqSums and kApplyUpdate, or
// (DP-SGD) kApplyNoisyUpdate, which ends the turn.
enum class ControlOp : uint32_t {
  kBeginTurn = 1,    // u64 global turn index: the next turn, held by the caller (schedule.h);
                     // zero the shard's gradients: a party's batch starts
  kGradSqSums = 2,   // reply: per-tensor sums of squared gradients (f64 each, layout order)
  kApplyUpdate = 3,  // f32 clip coefficient, f32 lr: scale gradients, step AdamW
  // DP-SGD (docs/privacy.md)
  kClipFactors = 4,  // u32 layer, u32 n_units, n_units x f32: add the units' clipped gradient sum
                     // of that layer's experts (rows of the last kExpertBackwardUnits)
  kApplyNoisyUpdate = 5,  // f32 noise std, f32 scale, f32 lr, u64 noise stream: add Gaussian noise
                          // to every gradient coordinate of the shard, scale, step AdamW (weights
                          // exchange: std must be 0, the owner noised the sums before they left)
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
  // exchange: the calls it serves, activations' expert calls or weights' fetches and gradient
  // sums (the other kind is refused). Turns follow the schedule of (tc.seed, n_parties), from 0.
  ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows,
             const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32,
             Exchange exchange = Exchange::kActivations);
  // Serves one request of party `from`. While a turn is open only its holder is served, in the
  // order of ControlOp; with no turn open, a forward or a weight fetch is an evaluation (served
  // to any party, kept for no backward) and kBeginTurn opens the next turn. Throws std::runtime_error naming
  // `from` on a malformed, out-of-turn or out-of-order call or a non-finite value, with no
  // state change; a call whose reply fails to encode changes nothing either.
  Bytes handle(MsgKind kind, int from, const Bytes& request);
  // Serve turns from `turn` on: a resumed host continues at its checkpoint's turn. Ends an open
  // turn.
  void start_at(uint64_t turn);
  // The open turn, or the next to begin.
  uint64_t turn() const { return turn_; }
  // The party whose turn is open; -1 when none is.
  int holder() const { return holder_; }

  ParamSet& params() { return shard_; }
  const ParamSet& params() const { return shard_; }
  const AdamW& optimizer() const { return opt_; }
  AdamW& optimizer() { return opt_; }  // to restore a checkpoint
  size_t activation_bytes() const { return compute_.activation_bytes(); }
  // The undo copy of one layer's gradients (a narrow wire's backward reply may fail: handle), or
  // (weights exchange) one expert's gradient sum as it is checked before it is kept.
  size_t scratch_bytes() const { return (undo_.size() + grad_in_.size()) * sizeof(float); }

 private:
  enum class Call { kForward, kBackward, kBackwardUnits };
  // Where an MoE layer stands in the open turn.
  enum class Stage { kIdle, kForwarded, kUnits };
  struct Layer {
    Stage stage = Stage::kIdle;
    std::vector<int> offsets;  // rows of the forward (kForwarded, kUnits)
    int n_units = 0;           // units of the per-unit backward (kUnits)
  };
  Bytes serve(MsgKind kind, int from, const Bytes& request);
  Bytes expert_call(Call call, MsgKind kind, int from, const Bytes& request);
  Bytes control(int from, const Bytes& request);
  // collab.exchange "weights" (src/collab/weights_host.cpp): a weight fetch or a gradient sum.
  Bytes weights_call(MsgKind kind, int from, const Bytes& request);
  // Throws unless every hosted expert's gradient sum of the open turn has arrived (weights).
  void require_all_grads(const std::string& what) const;
  // Throws unless `from` holds the open turn (and, gradients_open, its gradient norms have not
  // been taken yet: expert calls, clip factors and a noisy update come before).
  void require_turn(int from, const std::string& what, bool gradients_open) const;
  void require_layers_idle(const std::string& what) const;
  void end_turn();
  void add_noise(float std, uint64_t stream);
  // Copies (restore: back) the hosted experts' gradients of `layer` into undo_.
  void keep_grads(int layer, bool restore);

  ModelConfig cfg_;
  int party_, n_parties_;
  uint64_t seed_;
  WireDtype wire_;
  Exchange exchange_;
  std::vector<int> local_;  // hosted expert ids (the same in every MoE layer)
  ParamSet shard_;
  LocalExperts compute_;
  AdamW opt_;
  uint64_t turn_ = 0;
  int holder_ = -1;
  bool summed_ = false;       // kGradSqSums answered: only the update may follow
  std::vector<Layer> layers_;  // per layer, in the open turn
  ExpertRequest in_;  // the last expert call (its buffers reused)
  std::vector<float> out_;  // its results in fp32, before they are encoded for the wire
  std::vector<float> undo_;  // one layer's hosted gradients; empty when replies always encode
  std::vector<float> grad_in_;       // weights: one expert's gradient sum, decoded and checked
  std::vector<uint8_t> grads_seen_;  // weights: [layer][hosted index] its sum arrived this turn
  HostPrivacy privacy_;
  std::unique_ptr<NoiseSource> noise_;  // the secure source, when not seeded
};

}  // namespace pcmoe
