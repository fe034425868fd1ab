#include <algorithm>
#include <filesystem>

#include "collab/runner.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace pcmoe {

std::string shared_tokenizer_file(const RunConfig& cfg) {
  if (!cfg.collab.init_from.empty()) return init_tokenizer_file(cfg.collab.init_from);
  return cfg.data.tokenizer;
}

CollabData load_collab_data(const RunConfig& cfg, int only_party, bool deployed_files) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  const int n = cfg.parties.n_parties;
  const int own = deployed_files && cfg.parties.mode == "paths" ? only_party : -1;  // read only this party's path
  const std::string tokenizer_file = shared_tokenizer_file(cfg);
  if (own >= 0 && tokenizer_file.empty())
    throw std::runtime_error("a deployed party reads only its own parties.paths entry, so the shared tokenizer must "
                             "come from a file: set data.tokenizer (`pcmoe tokenizer` trains one on public text)");
  CollabData out;
  out.corpus = cfg.parties.mode == "paths" ? data::load_party_corpora(cfg.parties, own) : data::load_corpus(cfg.data);
  out.split = data::split_documents(out.corpus, cfg.data.val_fraction, cfg.data.split_seed);
  out.assignment = data::assign_parties(out.corpus, out.split, cfg.parties, own);
  const data::Corpus& corpus = out.corpus;
  const std::vector<data::PartyData>& assignment = out.assignment;
  // One tokenizer for all: a shared file, or one trained on the union of the parties' training
  // documents (a shared vocabulary is part of the shared model).
  std::vector<size_t> union_train;
  for (const auto& pd : assignment) union_train.insert(union_train.end(), pd.train.begin(), pd.train.end());
  std::sort(union_train.begin(), union_train.end());
  out.tokenizer = tokenizer_file.empty() ? data::Tokenizer::train_or_load(corpus, union_train, cfg.data)
                                         : data::Tokenizer::load(tokenizer_file);
  const data::Tokenizer& tok = out.tokenizer;
  if (tok.vocab_size() != mc.vocab_size)
    throw std::runtime_error("tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but model.vocab_size is " +
                             std::to_string(mc.vocab_size));

  out.tokens_per_turn = tokens_per_step(cfg);
  out.tokenizer_model = tok.model_file();
  out.bos_id = tok.bos_id();
  for (int p = 0; p < n; ++p) {
    PartyStreams ps;
    if (only_party >= 0 && p != only_party) {
      out.parties.push_back(std::move(ps));
      continue;
    }
    ps.train = data::encode_documents(tok, corpus, assignment[p].train, cfg.data.cache_dir);
    ps.val = data::encode_documents(tok, corpus, assignment[p].val, cfg.data.cache_dir);
    if (ps.train.tokens.size() <= (size_t)mc.seq_len + 1 || ps.val.tokens.size() <= (size_t)mc.seq_len + 1)
      throw std::runtime_error("party " + std::to_string(p) + " has fewer than seq_len+1 tokens of training or validation text");
    ps.val_windows = data::validation_windows(ps.val, mc.seq_len, tc.eval_windows, &ps.n_val);
    ps.categories = assignment[p].categories;
    std::fprintf(stderr, "party %d: %zu train tokens, %zu validation tokens, categories:", p, ps.train.tokens.size(),
                 ps.val.tokens.size());
    for (const auto& c : ps.categories) std::fprintf(stderr, " %s", c.c_str());
    std::fprintf(stderr, "\n");
    out.parties.push_back(std::move(ps));
  }
  // Samplers point at their streams: made once the streams have stopped moving.
  for (int p = 0; p < n; ++p)
    if (only_party < 0 || p == only_party)
      out.parties[p].sampler = std::make_unique<data::BatchSampler>(out.parties[p].train, mc.seq_len, party_seed(cfg, p));
  return out;
}

data::TokenStream public_tokens(const RunConfig& cfg, const CollabData& data, const std::vector<std::string>& categories) {
  for (const data::PartyData& pd : data.assignment)
    for (const std::string& c : categories)
      if (std::find(pd.categories.begin(), pd.categories.end(), c) != pd.categories.end())
        throw std::runtime_error("category '" + c + "' is held by a party and cannot be treated as public");
  std::vector<size_t> docs;
  for (size_t d : data.split.train)
    if (std::find(categories.begin(), categories.end(), data.corpus.docs[d].category) != categories.end()) docs.push_back(d);
  data::TokenStream ts = data::encode_documents(data.tokenizer, data.corpus, docs, cfg.data.cache_dir);
  if (ts.tokens.size() <= (size_t)cfg.model.seq_len + 1)
    throw std::runtime_error("the public categories hold fewer than seq_len+1 tokens of training text");
  return ts;
}

uint64_t party_seed(const RunConfig& cfg, int party) { return cfg.train.seed + 7919 * (uint64_t)(party + 1); }

void fill_turn(const RunConfig& cfg, const PartyStreams& party, int64_t step, int32_t* windows) {
  const TrainConfig& tc = cfg.train;
  const size_t row = cfg.model.seq_len + 1;
  for (int m = 0; m < tc.grad_accum; ++m)
    party.sampler->sample(step, m, tc.batch_size, windows + (size_t)m * tc.batch_size * row);
}

}  // namespace pcmoe
