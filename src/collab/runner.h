// `pcmoe collab`: from one config and seed, trains PC-MoE, a centralised model and local-only
// models on the same party data and the same tokens per party, then compares them.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/data.h"
#include "train/train_config.h"

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
// shared tokenizer (the starting checkpoint's, or trained on the union of the parties' training
// documents), each party's encoded streams and seeded sampler. With only_party >= 0 only that
// party's streams are encoded (the others stay empty), as a deployed party holds only its own.
struct CollabData {
  std::vector<PartyStreams> parties;
  int64_t tokens_per_turn = 0;
  std::string tokenizer_model;
  int32_t bos_id = -1;  // the tokenizer's document start (DP-SGD's document units)
};
CollabData load_collab_data(const RunConfig& cfg, int only_party = -1);

// Party `party`'s batch of round `step`: grad_accum x batch_size windows of seq_len+1 tokens.
void fill_turn(const RunConfig& cfg, const PartyStreams& party, int64_t step, std::vector<int32_t>& windows);

// Writes out_dir/metrics.jsonl (every turn of every mode, with the schedule) and
// out_dir/report.json; prints progress and the comparison table. Returns the report.
nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir);

}  // namespace pcmoe
