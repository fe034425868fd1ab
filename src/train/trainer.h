// The training loop behind `pcmoe train`: data, model, optimizer, progress, metrics, checkpoints
// and the final report.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/data.h"
#include "model/model.h"
#include "train/train_config.h"

namespace pcmoe {

struct Dataset {
  data::Corpus corpus;
  data::Split split;
  data::Tokenizer tokenizer;
  data::TokenStream train, val;
};
// The corpus of cfg.data and its train/validation split (no tokenizer or streams yet); throws
// when either side is empty.
Dataset load_split_corpus(const TrainRunConfig& cfg);
// Loads the corpus, splits it, encodes both sides with the tokenizer at `tokenizer_model`, or
// (when empty) data.tokenizer's, or (when that is empty too) the one trained on the training
// split (cached).
Dataset prepare_dataset(const TrainRunConfig& cfg, const std::string& tokenizer_model = "");
// `pcmoe tokenizer`: writes to out_file the tokenizer prepare_dataset trains for cfg without a
// tokenizer file (on the training split of cfg.data's corpus, model.vocab_size pieces), for
// every party to share. Refuses an existing out_file.
void write_tokenizer(const TrainRunConfig& cfg, const std::string& out_file);

// Mean cross-entropy over `n` windows of seq_len+1 tokens, in batches of model.max_batch().
double evaluate(Model& model, const std::vector<int32_t>& windows, int n);
// The same over windows that are consecutive parts of `parts[i]` windows each (every party's
// validation windows, pooled): the mean over all of them and over each part, from one pass whose
// batches never straddle two parts. Each part's mean is what evaluate() gives on that part alone,
// bit for bit, and so is the overall mean when every part but the last fills whole batches.
struct PartsLoss {
  double all = 0;
  std::vector<double> part;
};
PartsLoss evaluate_parts(Model& model, const std::vector<int32_t>& windows, const std::vector<int>& parts);
// Entropy (nats) of the token frequencies of `tokens`: the loss of the best context-free model.
double unigram_entropy(const std::vector<int32_t>& tokens, int vocab_size);
// Peak resident set size of this process, bytes.
size_t peak_rss_bytes();

struct TrainOptions {
  std::string out_dir;
  bool resume = false;  // continue from out_dir/checkpoint
  int64_t until = -1;   // stop (with a checkpoint) after this step, as an interrupted run would
  std::string init_from;  // start from these weights and their tokenizer (a checkpoint or a Hugging Face dir)
};
// Trains, writes out_dir/{metrics.jsonl, report.json, checkpoint/}; returns the report. `config`:
// the whole run config of which cfg is part, as JSON (collab/run_config.h's to_json), which the
// checkpoints and the report record.
nlohmann::json run_training(const TrainRunConfig& cfg, const nlohmann::json& config, const TrainOptions& opts);

}  // namespace pcmoe
