// `pcmoe collab`: from one config and seed, trains PC-MoE, a centralised model and local-only
// models on the same party data and the same tokens per party, then compares them.
#pragma once
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "data/data.h"
#include "model/model.h"
#include "train/train_config.h"

namespace pcmoe {

// What `pcmoe collab` offers a mode defined above collab/ (the federated baselines of
// src/fed/): the parties' data in the comparison's order, and the evaluation every mode gets.
class CollabContext {
 public:
  virtual ~CollabContext() = default;
  virtual const RunConfig& config() const = 0;
  virtual int n_parties() const = 0;
  virtual int64_t tokens_per_turn() const = 0;  // tokens of one party's optimizer step
  // Party p's batch of its step `step` (windows[grad_accum * batch_size, T+1]): the batch of
  // its PC-MoE turn in round `step`.
  virtual void fill_turn(int party, int64_t step, int32_t* windows) const = 0;
  // {"val_loss_own", "val_loss_pooled"} of `model` for party p.
  virtual nlohmann::json evaluate(Model& model, int party) const = 0;
  virtual void log(const nlohmann::json& line) = 0;  // one line of metrics.jsonl
  virtual void progress(const std::string& mode, int64_t done, int64_t total, float loss, double seconds) const = 0;
  // The training documents of `categories` (none of which a party may hold), encoded with the
  // run's tokenizer: data every party may treat as public.
  virtual data::TokenStream public_tokens(const std::vector<std::string>& categories) const = 0;
};
// A mode run by such a layer: its report["modes"] entry, with "parties": one object per party
// holding at least val_loss_own and val_loss_pooled.
using ExtraMode = std::function<nlohmann::json(CollabContext&)>;

// Writes out_dir/metrics.jsonl (every turn of every mode, with the schedule) and
// out_dir/report.json; prints progress and the comparison table. Returns the report.
// `extra_modes` runs the modes of collab.modes that are not collab's own.
nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir,
                          const std::map<std::string, ExtraMode>& extra_modes = {});

}  // namespace pcmoe
