// A party's expert shard as a service: expert e of every MoE layer lives on party e mod n. The
// host runs forward and backward on the hidden states a party sends, accumulates its experts'
// gradients over that party's batch, and steps its own AdamW state when the party says so
// (collab.schedule "concurrent": once per round, on every party's contribution: docs/protocol.md).
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collab/expert_wire.h"
#include "collab/schedule.h"
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
// (DP-SGD) kApplyNoisyUpdate, which ends the turn. In concurrent rounds every party holds one
// turn of the round at once; each sees only its own contribution (its norms) and the host steps
// when the last of the round's updates arrives.
enum class ControlOp : uint32_t {
  kBeginTurn = 1,    // u64 global turn index: the next turn, held by the caller (schedule.h);
                     // zero the shard's gradients (concurrent: the caller's slot's): a party's
                     // batch starts
  kGradSqSums = 2,   // reply: per-tensor sums of squared gradients (f64 each, layout order; concurrent:
                     // of the caller's own contribution)
  kApplyUpdate = 3,  // f32 clip coefficient, f32 lr: scale gradients, step AdamW (concurrent: kept
                     // until the round's last update, which steps once on every party's)
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
  // sums (the other kind is refused). Turns follow the schedule of (tc.seed, n_parties,
  // schedule), from 0.
  ExpertHost(const ModelConfig& cfg, const TrainConfig& tc, int party, int n_parties, int max_rows,
             const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32,
             Exchange exchange = Exchange::kActivations, Schedule schedule = Schedule::kSequential);
  // Serves one request of party `from`. While a turn is open only its holder is served, in the
  // order of ControlOp; with no turn open, a forward or a weight fetch is an evaluation (served
  // to any party, kept for no backward) and kBeginTurn opens the next turn. Throws std::runtime_error naming
  // `from` on a malformed, out-of-turn or out-of-order call or a non-finite value, with no
  // state change; a call whose reply fails to encode changes nothing either. Concurrent rounds:
  // the same for each party's own turn of the open round (its calls need not follow any other
  // party's), and safe to call from one thread per caller at once.
  Bytes handle(MsgKind kind, int from, const Bytes& request);
  // Serve turns from `turn` on (concurrent: the first of a round): a resumed host continues at its
  // checkpoint's turn. Ends an open turn.
  void start_at(uint64_t turn);
  // The open turn, or the next to begin; concurrent: the first turn of the open round.
  uint64_t turn() const;
  // The party whose turn is open; -1 when none is (always, concurrent).
  int holder() const { return holder_; }
  Schedule schedule() const { return schedule_; }
  // Concurrent rounds: the gradients party `caller` has contributed in the open round (its slot;
  // party 0's is the shard's own block, where the round's combination then forms).
  const ParamSet& contribution(int caller) const { return *slots_.at(caller)->grads; }

  ParamSet& params() { return shard_; }
  const ParamSet& params() const { return shard_; }
  const AdamW& optimizer() const { return opt_; }
  AdamW& optimizer() { return opt_; }  // to restore a checkpoint
  // Every caller slot's expert activations (one slot, or one per party in concurrent rounds).
  size_t activation_bytes() const;
  // Per slot: the undo copy of one layer's gradients (a narrow wire's backward reply may fail:
  // handle), or (weights exchange) one expert's gradient sum as it is checked before it is kept.
  size_t scratch_bytes() const;
  // Concurrent rounds: the gradient blocks of the parties' contributions beyond the shard's own.
  size_t slot_gradient_bytes() const;
  int slots() const { return (int)slots_.size(); }  // callers kept apart: 1, or n (concurrent)

 private:
  enum class Call { kForward, kBackward, kBackwardUnits };
  // Where an MoE layer stands in the open turn.
  enum class Stage { kIdle, kForwarded, kUnits };
  struct Layer {
    Stage stage = Stage::kIdle;
    std::vector<int> offsets;  // rows of the forward (kForwarded, kUnits)
    int n_units = 0;           // units of the per-unit backward (kUnits)
  };
  // The order that ends a turn: kApplyUpdate (coef, lr) or kApplyNoisyUpdate (std, scale, lr,
  // stream), checked.
  struct Update {
    bool noisy = false;
    float coef = 1, std = 0, scale = 1, lr = 0;
    uint64_t stream = 0;
  };
  // One caller's turn as the host keeps it: where its layers stand, its experts' forward state
  // and its gradients. A sequential host has one slot, its turn holder's; a concurrent host one
  // per party, each touched only by that party's calls (under `mu`) and by the round's end.
  struct Slot {
    ParamSet* grads = nullptr;        // the shard's own block (slot 0) or `own`
    std::unique_ptr<ParamSet> own;    // concurrent, parties 1..n-1: a block over the shard's weights
    std::unique_ptr<LocalExperts> compute;
    std::vector<Layer> layers;
    bool summed = false;               // kGradSqSums answered: only the update may follow
    ExpertRequest in;                  // the last expert call (its buffers reused)
    std::vector<float> out;            // its results in fp32, before they are encoded for the wire
    std::vector<float> undo;           // one layer's hosted gradients; empty when replies always encode
    std::vector<float> grad_in;        // weights: one expert's gradient sum, decoded and checked
    std::vector<uint8_t> grads_seen;   // weights: [layer][hosted index] its sum arrived this turn
    std::mutex mu;                     // concurrent: one call of this caller at a time
    // Concurrent, guarded by round_mu_: the caller's turn of the open round and its update order.
    enum class State { kIdle, kOpen, kApplied } state = State::kIdle;
    Update update;
  };
  Slot& slot_of(int from) { return *slots_[schedule_ == Schedule::kConcurrent ? from : 0]; }  // from checked
  const Slot& slot_of(int from) const { return *slots_[schedule_ == Schedule::kConcurrent ? from : 0]; }
  Bytes serve(MsgKind kind, int from, const Bytes& request);
  Bytes expert_call(Call call, MsgKind kind, int from, const Bytes& request);
  Bytes control(int from, const Bytes& request);
  // collab.exchange "weights" (src/collab/weights_host.cpp): a weight fetch or a gradient sum.
  Bytes weights_call(MsgKind kind, int from, const Bytes& request);
  // Throws unless every hosted expert's gradient sum of the open turn has arrived (weights).
  void require_all_grads(const Slot& s, const std::string& what) const;
  // Whether `from` has a turn open (sequential: holds the open turn; concurrent: its turn of the
  // open round has begun and sent no update). With none open, a forward or a fetch is an
  // evaluation's.
  bool in_turn(int from) const;
  // Throws unless `from` holds the open turn (and, gradients_open, its gradient norms have not
  // been taken yet: expert calls, clip factors and a noisy update come before).
  void require_turn(int from, const std::string& what, bool gradients_open) const;
  void require_layers_idle(const Slot& s, const std::string& what) const;
  void end_turn();
  // Adds N(0, std²) to every gradient of `grads` from the seeded stream or the secure source.
  void add_noise(ParamSet& grads, float std, uint64_t stream);
  // Copies (restore: back) the hosted experts' gradients of `layer` into the slot's undo copy.
  void keep_grads(Slot& s, int layer, bool restore);
  // Opens turn `turn` for `from`, or throws: sequential, the next turn, its holder's; concurrent
  // (src/collab/round_host.cpp), from's turn of the open round, once.
  void begin_turn(int from, uint64_t turn);
  void begin_round_turn(int from, uint64_t turn);
  // Ends from's turn with its update: sequential, the shard steps on it; concurrent, it is kept
  // until the round's last, which combines every contribution in party order and steps once.
  void apply(int from, const Update& u);
  void apply_in_round(int from, const Update& u);
  void close_round();
  // Concurrent: the lock an evaluation holds while it reads the weights (no round may end meanwhile).
  std::unique_lock<std::mutex> evaluation_lock(bool evaluation);

  ModelConfig cfg_;
  int party_, n_parties_;
  uint64_t seed_;
  WireDtype wire_;
  Exchange exchange_;
  Schedule schedule_;
  std::vector<int> local_;  // hosted expert ids (the same in every MoE layer)
  ParamSet shard_;
  AdamW opt_;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t turn_ = 0;  // sequential: the open or next turn; concurrent: the open round's first
  int holder_ = -1;    // sequential: the open turn's holder
  mutable std::mutex round_mu_;  // concurrent: the round, every slot's state, the weights' step
  HostPrivacy privacy_;
  std::unique_ptr<NoiseSource> noise_;  // the secure source, when not seeded
};

}  // namespace pcmoe
