// PC-MoE with every party in one process: each party's backbone, optimizer and model, its
// expert host, and the turns of the schedule (the seeded round-robin, or concurrent rounds). All
// traffic between parties goes through the Transport, so a multi-process transport can replace
// the in-process one.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "collab/expert_host.h"
#include "collab/remote_experts.h"
#include "collab/schedule.h"
#include "collab/transport.h"
#include "collab/weights_turn.h"
#include "model/model.h"
#include "privacy/dp_sgd.h"
#include "train/adamw.h"

namespace pcmoe {

struct CollabParty {
  // max_batch: sequences per micro-batch (0: tc.batch_size); privacy.per_unit plans DP-SGD;
  // wire: the dtype of expert-call rows (or, exchanging weights, of weights and gradient sums), as
  // this party sends them and as its host answers; exchange: collab.exchange; schedule:
  // collab.schedule (its host's).
  CollabParty(const ModelConfig& cfg, const TrainConfig& tc, Transport& transport, int id, int n_parties,
              int max_batch = 0, const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32,
              Exchange exchange = Exchange::kActivations, Schedule schedule = Schedule::kSequential);
  int id;
  ParamSet backbone;  // embedding, attention, norms, routers, head: never leaves the party
  AdamW optimizer;    // for the backbone
  RemoteExperts experts;                     // the activations exchange's backend
  std::unique_ptr<WeightsExchange> weights;  // the weights exchange's backend (else null)
  Model model;
  ExpertHost host;    // this party's shard of the experts, served to every party
  int64_t turns = 0;  // optimizer steps taken on this party's data (its lr schedule position)
  float expert_lr_scale = 1.0f;  // collab.expert_lr_scale: the hosts step at lr x this
};

// A party's planned memory in bytes by category: its backbone (parameters, gradients, AdamW
// state), its expert shard (likewise), the activations of its model and of its host's experts,
// scratch, the transport buffers (`transport_bytes`: the largest request and response it holds
// at once) and, exchanging weights, the fetched expert and the gradient sums it holds (`exchange`).
// In concurrent rounds its host keeps every party's gradients and expert activations apart: n
// slots of each (`gradients`, `activations`; `host_slots` names the part beyond one slot).
nlohmann::json party_memory(const CollabParty& p, size_t transport_bytes);

struct TurnResult {
  LossStats loss;
  double grad_norm;  // global norm before clipping: backbone + every expert
  float lr;
};

// What a turn needs to know of the others: every tensor name in the full model's order, and
// the names each host holds, so the global gradient norm adds the parts in canonical order.
// Derived from (config, number of parties) alone.
struct TurnPlan {
  TurnPlan(const ModelConfig& cfg, int n_parties);
  std::vector<std::string> canonical;
  std::vector<std::vector<std::string>> host_tensors;
};

// Party `me` trains one step, global turn `turn` (which it holds), on windows[grad_accum *
// batch_size, T+1]: every host opens the turn and zeroes its gradients; forward and backward
// through the hosts; the global gradient norm from the backbone's and every host's per-tensor
// sums; one clipped update of the backbone here and of every expert on its host. A host's reply
// that is malformed or not finite throws before the backbone changes. Exchanging weights, the
// experts run here and each host gets its experts' gradient sums before the norms are taken.
// In concurrent rounds the same calls: each host answers with this party's own contribution, so
// the norm and the clip coefficient are this party's alone, and steps when the round's last
// update arrives. Safe to run for every party at once (one thread each) on a thread-safe transport.
TurnResult run_turn(CollabParty& me, Transport& transport, const TrainConfig& tc, const TurnPlan& plan, int64_t turn,
                    const int32_t* windows);

// A DP-SGD turn (docs/privacy.md): party `me` clips each of its sampled units' gradients
// (backbone here, experts at their hosts, which report each unit's squared norm and receive the
// clip factors), adds N(0, σ²C²) noise to its backbone while every host adds its own to all of
// its experts, divides by the expected batch qN and updates everywhere. `noise_stream` names
// (party, turn) for seeded noise. The party's own budget: its units, its plan. Exchanging
// weights, the party clips every unit here and adds the noise to every expert gradient sum before
// it leaves (after the backbone's, from the same source); the hosts add none.
struct DpTurnResult {
  TurnResult turn;
  ClippedBatch batch;
};
DpTurnResult run_dp_turn(CollabParty& me, Transport& transport, const TrainConfig& tc, const TurnPlan& plan,
                         int64_t turn, const PrivacyUnits& units, const DpPlan& dp, const std::vector<int>& sampled,
                         uint64_t noise_stream);

class PcMoeSession {
 public:
  PcMoeSession(const ModelConfig& cfg, const TrainConfig& tc, int n_parties, Transport& transport, int max_batch = 0,
               const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32,
               Exchange exchange = Exchange::kActivations, Schedule schedule = Schedule::kSequential);
  int n_parties() const { return (int)parties_.size(); }
  CollabParty& party(int p) { return *parties_[p]; }
  Schedule schedule() const { return schedule_; }
  // The party that holds global turn `turn` (turn_holder).
  int holder(int64_t turn) const { return turn_holder(tc_.seed, n_parties(), turn, schedule_); }
  // Every host serves turns from `turn` on (ExpertHost::start_at): a session that starts
  // mid-schedule, as a test of one party's turn does.
  void start_at(int64_t turn);

  // Global turn `turn`, its holder's (run_turn), on windows[grad_accum * batch_size, T+1].
  TurnResult train_turn(int64_t turn, const int32_t* windows) {
    return run_turn(party(holder(turn)), transport_, tc_, plan_, turn, windows);
  }
  // Global turn `turn` as its holder's DP-SGD turn (run_dp_turn).
  DpTurnResult train_dp_turn(int64_t turn, const PrivacyUnits& units, const DpPlan& dp, const std::vector<int>& sampled,
                             uint64_t noise_stream) {
    return run_dp_turn(party(holder(turn)), transport_, tc_, plan_, turn, units, dp, sampled, noise_stream);
  }

 private:
  TrainConfig tc_;
  Schedule schedule_;
  Transport& transport_;
  std::vector<std::unique_ptr<CollabParty>> parties_;
  TurnPlan plan_;
};

}  // namespace pcmoe
