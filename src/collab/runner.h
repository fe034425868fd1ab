// `pcmoe collab`: from one config and seed, trains PC-MoE, a centralised model and local-only
// models on the same party data and the same tokens per party, then compares them.
#pragma once
#include <memory>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collab/run_config.h"
#include "data/data.h"
#include "data/parties.h"
#include "model/model.h"

namespace pcmoe {

// One party's data: its training stream and sampler, its own validation windows.
struct PartyStreams {
  data::TokenStream train, val;
  std::unique_ptr<data::BatchSampler> sampler;
  std::vector<int32_t> val_windows;
  int n_val = 0;
  std::vector<std::string> categories;
};

// Every party's data as `pcmoe collab` deals it: the corpus split, the parties' documents, one
// shared tokenizer (shared_tokenizer_file's, or trained on the union of the parties' training
// documents), each party's encoded streams and seeded sampler. With only_party >= 0 only that
// party's streams are encoded (the others stay empty), as a deployed party holds only its own;
// only_party = parties.n_parties encodes none (a deployed federated server). With
// deployed_files, a deployed process reads no other party's files: in parties.mode "paths" only
// its own parties.paths entry (none for the server), with the tokenizer from its shared file
// (throws without one); other modes deal one corpus, so they read all of it.
struct CollabData {
  data::Corpus corpus;
  data::Split split;
  std::vector<data::PartyData> assignment;
  data::Tokenizer tokenizer;
  std::vector<PartyStreams> parties;
  int64_t tokens_per_turn = 0;
  std::string tokenizer_model;
  int32_t bos_id = -1;  // the tokenizer's document start (DP-SGD's document units)
};
CollabData load_collab_data(const RunConfig& cfg, int only_party = -1, bool deployed_files = false);

// The tokenizer file every party shares: collab.init_from's, or data.tokenizer; "" when the
// tokenizer is to be trained on the parties' training documents.
std::string shared_tokenizer_file(const RunConfig& cfg);

// The training documents of `categories` (none of which a party may hold), encoded with the
// run's tokenizer: data every party may treat as public. Throws naming a category a party holds.
data::TokenStream public_tokens(const RunConfig& cfg, const CollabData& data, const std::vector<std::string>& categories);

// The seed of party `party`'s batches: its sampler's, and its DP-SGD Poisson draws'.
uint64_t party_seed(const RunConfig& cfg, int party);

// Party `party`'s batch of round `step`: grad_accum x batch_size windows of seq_len+1 tokens.
void fill_turn(const RunConfig& cfg, const PartyStreams& party, int64_t step, int32_t* windows);

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
  // The learning curve's loss: pooled validation loss of `model` on every party's validation
  // windows (those of the final table); and whether the curve takes a point after `steps` of
  // train.steps steps per party.
  virtual double curve_loss(Model& model) const = 0;
  virtual bool curve_due(int64_t steps) const = 0;
  virtual std::string out_dir() const = 0;
  // Saves a mode's released model as out_dir/<name>/checkpoint, with the run's config and
  // tokenizer (as collab saves its own modes' models: what the membership audit attacks).
  virtual void save_model(const std::string& name, const ParamSet& params, int64_t step) const = 0;
  virtual void log(const nlohmann::json& line) = 0;  // one line of metrics.jsonl
  virtual void progress(const std::string& mode, int64_t done, int64_t total, float loss, double seconds) const = 0;
  // The training documents of `categories` (none of which a party may hold), encoded with the
  // run's tokenizer: data every party may treat as public.
  virtual data::TokenStream public_tokens(const std::vector<std::string>& categories) const = 0;
};
// A mode run by such a layer: its report["modes"] entry, with "parties": one object per party
// holding at least val_loss_own and val_loss_pooled, and "curve" (see run_collab).
using ExtraMode = std::function<nlohmann::json(CollabContext&)>;

// Writes out_dir/metrics.jsonl (every turn of every mode, with the schedule) and
// out_dir/report.json; prints progress and the comparison table. Returns the report. Every mode
// records its learning curve (pooled validation loss on all the validation windows of every
// party, the table's, at the start, every train.eval_every turns per party and at the end,
// against tokens and bytes sent per party): report["curves"], and the figure out_dir/curves.svg
// (collab/curves_plot.h). report["evaluation"] gives what every validation pass cost together.
// `extra_modes` runs the modes of collab.modes that are not collab's own.
nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir,
                          const std::map<std::string, ExtraMode>& extra_modes = {});

}  // namespace pcmoe
