// The federated baselines as modes of `pcmoe collab`: fedavg (fp32), int8, topk-ef, cg-fedllm and
// fedavg-lora, on the same party data, batches and tokens per party as PC-MoE.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collab/runner.h"
#include "fed/fedavg.h"

namespace pcmoe::fed {

// Where a federated run starts, in the simulation and in every deployed process alike: the
// global trainable state (the full model from train.seed and collab.init_from; fedavg-lora: the
// adapters) and fedavg-lora's frozen base (that full model; empty in the other modes). Throws
// when fed.block_size exceeds the update of a mode that cuts it into blocks.
struct FedStart {
  std::vector<float> global, base;
};
FedStart fed_start(const RunConfig& cfg, const std::string& mode);

// The run's facts for a report: rounds, local_steps, trainable_floats, server_optimizer, and
// the adapters (fedavg-lora) or k (topk-ef).
nlohmann::json fed_facts(const RunConfig& cfg, const std::string& mode, size_t trainable_floats);

// The server's autoencoder in cg-fedllm (null in the other modes): fed.autoencoder's, else a
// fresh one that TGAP pre-trains (fed.tgap_steps > 0) from `initial` on `public_text()`. Adds
// "autoencoder" (and "tgap") to `facts`.
std::unique_ptr<BlockAutoencoder> server_autoencoder(const RunConfig& cfg, const std::string& mode,
                                                     const std::vector<float>& initial,
                                                     const std::function<data::TokenStream()>& public_text,
                                                     nlohmann::json& facts);

// Party p's line of metrics.jsonl for round r, as collab writes it (and a deployed party).
nlohmann::json round_line(const std::string& mode, const FedConfig& fc, int64_t round, int party, const PartyRound& pr);

// What watches a mode's rounds from the server's seat, beside the training: the leakage audit's
// federated server (eval/fed_server_audit.h), reached through this door so that fed/ holds no
// attack and does not depend on eval/.
class ServerObserver {
 public:
  virtual ~ServerObserver() = default;
  // Every round, before the parties' updates, with the round's global state and the server's
  // autoencoder that round (cg-fedllm; else null), the one the parties encode with; `recorded`:
  // the audit's round, whose parties' decoded updates follow through party_update.
  virtual void begin_round(int round, const std::vector<float>& global, const BlockAutoencoder* ae, bool recorded) = 0;
  virtual void party_update(int party, const std::vector<float>& update) = 0;
  virtual nlohmann::json cells() const = 0;  // the mode report's "audit_bag_of_words"
};
// A mode's observer (null: none; it may note why in the mode's report `facts`), given
// fedavg-lora's frozen base (empty in the other modes).
using ServerObserverFactory = std::function<std::unique_ptr<ServerObserver>(
    CollabContext& ctx, const std::string& mode, const std::vector<float>& base, nlohmann::json& facts)>;

// Runs one mode; its report: per party validation losses, bytes up (sent) and down (received)
// per trained token, planned memory, reconstruction cosine and SNR; the server's memory, the
// rounds, the codec's uplink bytes and, for cg-fedllm, TGAP's pre-training losses; with
// `server_audit`, its observer's cells.
nlohmann::json run_fed_mode(CollabContext& ctx, const std::string& mode, const ServerObserverFactory& server_audit);

// The five modes, for run_collab's extra_modes, each watched by `server_audit` (if given).
std::map<std::string, ExtraMode> fed_modes(const ServerObserverFactory& server_audit = {});

}  // namespace pcmoe::fed
