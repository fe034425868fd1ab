// Which documents each party holds in collaborative (PC-MoE) training. Parties are simulated by
// assigning the documents of one pooled corpus, on top of the global train/validation split, so
// that the pooled validation set is the union of the parties' validation sets.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "data/data.h"

namespace pcmoe::data {

struct PartySplitConfig {
  // "genre": disjoint groups of categories per party (non-iid); "iid": documents dealt evenly;
  // "dirichlet": per-category shares drawn from Dirichlet(alpha); "paths": one corpus per party.
  std::string mode = "genre";
  int n_parties = 4;
  double alpha = 0.5;  // Dirichlet concentration: small means each category sits with few parties
  uint64_t seed = 1;   // "iid" and "dirichlet" draws
  // "genre" only, optional: the categories of each party (one list per party); categories not
  // listed are unused. Empty: a balanced grouping of all categories.
  std::vector<std::vector<std::string>> genres;
  // "paths" only: one directory of .txt files or one .jsonl file per party.
  std::vector<std::string> paths;
};
// Strict (unknown keys and wrong types throw std::runtime_error naming the key) and validated.
PartySplitConfig party_split_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const PartySplitConfig& c);

struct PartyData {
  std::vector<size_t> train;            // indices into the pooled corpus's docs, ascending
  std::vector<size_t> val;              // this party's validation documents, ascending
  std::vector<std::string> categories;  // categories of its train and val documents, sorted
};

// Assigns the documents of `split` (the global split of the pooled `corpus`) to cfg.n_parties
// parties: train documents only from split.train and validation documents only from split.val,
// each document to at most one party. Deterministic in (corpus, split, cfg).
//
// "genre" without explicit groups sorts categories by document count (descending, ties by name)
// and gives each to the party with the fewest documents so far (ties to the lower index).
// "dirichlet" cuts each category's shuffled train and val documents at the cumulative drawn
// shares; a party left without train (or val) documents then receives one from the party with
// the most (ties to the lower index), which gives up its highest-indexed document.
// "paths" gives party p the documents whose category starts with "party<p>/" (see
// load_party_corpora).
//
// Throws std::runtime_error when the configuration does not fit the corpus or when a party
// would end with no train or no validation document; with only >= 0, only party `only` must have
// documents (the corpus of load_party_corpora(cfg, only) holds no one else's).
std::vector<PartyData> assign_parties(const Corpus& corpus, const Split& split, const PartySplitConfig& cfg,
                                      int only = -1);

// "paths" mode: loads each party's corpus and pools them in party order. Party p's documents get
// category "party<p>/<category>" and id "party<p>/<id>" (so ids stay unique across parties).
// With only >= 0, only party `only`'s path is read (none when only >= n_parties): what a deployed
// party holds. Its documents, categories and split are the same as in the pooled corpus.
Corpus load_party_corpora(const PartySplitConfig& cfg, int only = -1);

}  // namespace pcmoe::data
