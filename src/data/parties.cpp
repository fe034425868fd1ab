// Assignment of the pooled corpus's documents to the parties of a collaborative run.
#include "data/parties.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "common/json_fields.h"
#include "data/hashing.h"
#include "tensor/rng.h"

namespace pcmoe::data {
namespace {

namespace fs = std::filesystem;

using PartyLists = std::vector<std::vector<size_t>>;  // one list of document indices per party

std::string party_prefix(size_t party) { return "party" + std::to_string(party) + "/"; }

std::string join(const std::vector<std::string>& items) {
  std::string list;
  for (const std::string& item : items) list += (list.empty() ? "" : ", ") + item;
  return list;
}

// Checks what can be checked without a corpus; shared by the JSON reader and the entry points,
// since a config may also be built in code.
void validate(const PartySplitConfig& c) {
  const std::vector<std::string> modes = {"genre", "iid", "dirichlet", "paths"};
  if (std::find(modes.begin(), modes.end(), c.mode) == modes.end()) {
    throw std::runtime_error("config key 'parties.mode' is '" + c.mode +
                             "'; expected one of: " + join(modes));
  }
  if (c.n_parties < 1) {
    throw std::runtime_error("config key 'parties.n_parties' must be at least 1, got " +
                             std::to_string(c.n_parties));
  }
  if (!std::isfinite(c.alpha) || c.alpha <= 0.0) {
    throw std::runtime_error("config key 'parties.alpha' must be a positive number, got " +
                             std::to_string(c.alpha));
  }
  const size_t n = static_cast<size_t>(c.n_parties);
  // A setting the mode ignores is rejected rather than silently dropped.
  if (!c.genres.empty()) {
    if (c.mode != "genre")
      throw std::runtime_error("config key 'parties.genres' is only used in mode \"genre\"");
    if (c.genres.size() != n) {
      throw std::runtime_error("config key 'parties.genres' has " + std::to_string(c.genres.size()) +
                               " lists; expected one per party (" + std::to_string(n) + ")");
    }
    std::map<std::string, size_t> owner;
    for (size_t p = 0; p < n; ++p) {
      if (c.genres[p].empty())
        throw std::runtime_error("config key 'parties.genres[" + std::to_string(p) + "]' is empty");
      for (const std::string& category : c.genres[p]) {
        const auto [it, fresh] = owner.emplace(category, p);
        if (!fresh) {
          throw std::runtime_error("config key 'parties.genres': category '" + category +
                                   "' is listed for party " + std::to_string(it->second) +
                                   " and again for party " + std::to_string(p));
        }
      }
    }
  }
  if (c.mode == "paths") {
    if (c.paths.size() != n) {
      throw std::runtime_error("config key 'parties.paths' has " + std::to_string(c.paths.size()) +
                               " entries; mode \"paths\" needs one per party (" + std::to_string(n) + ")");
    }
    for (size_t p = 0; p < n; ++p) {
      if (c.paths[p].empty())
        throw std::runtime_error("config key 'parties.paths[" + std::to_string(p) + "]' is empty");
    }
  } else if (!c.paths.empty()) {
    throw std::runtime_error("config key 'parties.paths' is only used in mode \"paths\"");
  }
}

// A generator per category, seeded by the seed and the category name, so that adding or removing
// a category leaves the other categories' draws unchanged.
Rng category_rng(uint64_t seed, const std::string& category) {
  detail::Fnv1a64 name_hash;
  name_hash.update(category);
  return Rng(seed ^ name_hash.digest());
}

void shuffle(std::vector<size_t>& items, Rng& rng) {
  for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[detail::below(rng.next_u64(), i)]);
}

// log of a Gamma(shape, 1) draw (Marsaglia and Tsang, 2000). Below shape 1 it uses
// Gamma(shape) = Gamma(shape + 1) * U^(1/shape); logs because U^(1/shape) underflows to 0 for
// small shapes, which would leave every share of a Dirichlet draw at 0.
double log_gamma_draw(double shape, Rng& rng) {
  if (shape < 1.0) return log_gamma_draw(shape + 1.0, rng) + std::log(rng.uniform_open()) / shape;
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  while (true) {
    double x = 0.0, v = 0.0;
    do {
      x = rng.normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    if (std::log(rng.uniform_open()) < 0.5 * x * x + d - d * v + d * std::log(v)) return std::log(d * v);
  }
}

// Shares of a Dirichlet(alpha, ..., alpha) draw: normalised Gamma(alpha) draws.
std::vector<double> dirichlet_draw(size_t n, double alpha, Rng& rng) {
  std::vector<double> shares(n);
  for (double& s : shares) s = log_gamma_draw(alpha, rng);
  const double max_log = *std::max_element(shares.begin(), shares.end());
  double total = 0.0;
  for (double& s : shares) total += (s = std::exp(s - max_log));
  for (double& s : shares) s /= total;
  return shares;
}

// Party p gets the documents at positions [round(S_{p-1} m), round(S_p m)) of `docs`, where S_p
// is the cumulative share; cutting at rounded cumulative shares makes the counts sum to m.
void cut_by_shares(const std::vector<size_t>& docs, const std::vector<double>& shares, PartyLists& parties) {
  double cumulative = 0.0;
  size_t begin = 0;
  for (size_t p = 0; p < shares.size(); ++p) {
    cumulative += shares[p];
    const size_t end =
        p + 1 == shares.size()
            ? docs.size()
            : std::min(docs.size(), static_cast<size_t>(std::llround(cumulative * docs.size())));
    parties[p].insert(parties[p].end(), docs.begin() + begin, docs.begin() + end);
    begin = end;
  }
}

// Gives each empty (sorted) list one document from the longest list (ties to the lower party),
// which gives up its highest-indexed document. Stops when no list has one to spare; the final
// check then reports the empty party.
void fill_empty_parties(PartyLists& parties) {
  for (std::vector<size_t>& party : parties) {
    if (!party.empty()) continue;
    auto donor = std::max_element(parties.begin(), parties.end(),
                                  [](const auto& a, const auto& b) { return a.size() < b.size(); });
    if (donor->size() < 2) return;
    party.push_back(donor->back());
    donor->pop_back();
  }
}

// The category groups of "genre" mode: the configured ones, or a balanced greedy grouping.
std::vector<std::vector<std::string>> genre_groups(const Corpus& corpus, const PartySplitConfig& cfg) {
  std::map<std::string, size_t> doc_counts;
  for (const Document& doc : corpus.docs) ++doc_counts[doc.category];
  std::vector<std::string> known;
  for (const auto& entry : doc_counts) known.push_back(entry.first);

  if (!cfg.genres.empty()) {
    for (const auto& group : cfg.genres) {
      for (const std::string& category : group) {
        if (!doc_counts.count(category)) {
          throw std::runtime_error("config key 'parties.genres': unknown category '" + category + "'; " +
                                   corpus.name + " has: " + join(known));
        }
      }
    }
    return cfg.genres;
  }

  const size_t n = static_cast<size_t>(cfg.n_parties);
  if (n > known.size()) {
    throw std::runtime_error("mode \"genre\" needs a category per party: n_parties is " + std::to_string(n) +
                             " but " + corpus.name + " has " + std::to_string(known.size()) +
                             " categories (" + join(known) + ")");
  }
  std::vector<std::pair<std::string, size_t>> by_size(doc_counts.begin(), doc_counts.end());
  std::stable_sort(by_size.begin(), by_size.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::vector<std::string>> groups(n);
  std::vector<size_t> load(n, 0);
  for (const auto& [category, count] : by_size) {
    const size_t lightest = std::min_element(load.begin(), load.end()) - load.begin();
    groups[lightest].push_back(category);
    load[lightest] += count;
  }
  return groups;
}

void assign_by_genre(const Corpus& corpus, const Split& split, const PartySplitConfig& cfg, PartyLists& train,
                     PartyLists& val) {
  std::map<std::string, size_t> party_of;
  const auto groups = genre_groups(corpus, cfg);
  for (size_t p = 0; p < groups.size(); ++p) {
    for (const std::string& category : groups[p]) party_of[category] = p;
  }
  auto deal = [&](const std::vector<size_t>& docs, PartyLists& parties) {
    for (size_t i : docs) {
      const auto it = party_of.find(corpus.docs[i].category);
      if (it != party_of.end()) parties[it->second].push_back(i);
    }
  };
  deal(split.train, train);
  deal(split.val, val);
}

void assign_iid(const Split& split, const PartySplitConfig& cfg, PartyLists& train, PartyLists& val) {
  Rng rng(cfg.seed);
  auto deal = [&](std::vector<size_t> docs, PartyLists& parties) {
    shuffle(docs, rng);
    for (size_t i = 0; i < docs.size(); ++i) parties[i % parties.size()].push_back(docs[i]);
  };
  deal(split.train, train);
  deal(split.val, val);
}

void assign_dirichlet(const Corpus& corpus, const Split& split, const PartySplitConfig& cfg,
                      PartyLists& train, PartyLists& val) {
  std::map<std::string, std::pair<std::vector<size_t>, std::vector<size_t>>> by_category;  // train, val
  for (size_t i : split.train) by_category[corpus.docs[i].category].first.push_back(i);
  for (size_t i : split.val) by_category[corpus.docs[i].category].second.push_back(i);
  for (auto& [category, docs] : by_category) {
    Rng rng = category_rng(cfg.seed, category);
    const std::vector<double> shares = dirichlet_draw(train.size(), cfg.alpha, rng);
    auto& [train_docs, val_docs] = docs;
    shuffle(train_docs, rng);
    cut_by_shares(train_docs, shares, train);
    shuffle(val_docs, rng);
    cut_by_shares(val_docs, shares, val);
  }
}

// The party p of a "party<p>/..." category, as written by load_party_corpora.
size_t party_of_prefixed(const Document& doc, size_t n_parties) {
  for (size_t p = 0; p < n_parties; ++p) {
    if (doc.category.starts_with(party_prefix(p))) return p;
  }
  throw std::runtime_error("mode \"paths\": document '" + doc.id + "' has category '" + doc.category +
                           "', which names none of the " + std::to_string(n_parties) +
                           " parties; load the corpus with load_party_corpora");
}

void assign_by_path(const Corpus& corpus, const Split& split, PartyLists& train, PartyLists& val) {
  for (size_t i : split.train) train[party_of_prefixed(corpus.docs[i], train.size())].push_back(i);
  for (size_t i : split.val) val[party_of_prefixed(corpus.docs[i], val.size())].push_back(i);
}

// The section's keys, each declared once (common/json_fields.h).
const auto party_split_fields = [](auto& c, auto&& field) {
  field("mode", c.mode);
  field("n_parties", c.n_parties);
  field("alpha", c.alpha);
  field("seed", c.seed);
  field("genres", c.genres);
  field("paths", c.paths);
};

}  // namespace

PartySplitConfig party_split_config_from_json(const nlohmann::json& j) {
  JsonFields fields(j, "parties");
  PartySplitConfig c;
  read_fields(fields, c, party_split_fields);
  fields.reject_unknown();
  validate(c);
  return c;
}

nlohmann::json to_json(const PartySplitConfig& c) { return fields_to_json(c, party_split_fields); }

std::vector<PartyData> assign_parties(const Corpus& corpus, const Split& split, const PartySplitConfig& cfg,
                                      int only) {
  validate(cfg);
  for (const auto* side : {&split.train, &split.val}) {
    for (size_t i : *side) {
      if (i >= corpus.docs.size()) {
        throw std::runtime_error("split index " + std::to_string(i) + " is outside the corpus (" +
                                 std::to_string(corpus.docs.size()) + " documents)");
      }
    }
  }
  const size_t n = static_cast<size_t>(cfg.n_parties);
  PartyLists train(n), val(n);
  if (cfg.mode == "genre") {
    assign_by_genre(corpus, split, cfg, train, val);
  } else if (cfg.mode == "iid") {
    assign_iid(split, cfg, train, val);
  } else if (cfg.mode == "dirichlet") {
    assign_dirichlet(corpus, split, cfg, train, val);
  } else {
    assign_by_path(corpus, split, train, val);
  }

  std::vector<PartyData> parties(n);
  for (size_t p = 0; p < n; ++p) {
    std::sort(train[p].begin(), train[p].end());
    std::sort(val[p].begin(), val[p].end());
  }
  if (cfg.mode == "dirichlet") {  // a small alpha can leave a party with nothing
    fill_empty_parties(train);
    fill_empty_parties(val);
  }
  for (size_t p = 0; p < n; ++p) {
    if (only >= 0 && p != (size_t)only) continue;
    const std::string party =
        "party " + std::to_string(p) + " of " + std::to_string(n) + " (mode \"" + cfg.mode + "\")";
    if (train[p].empty()) {
      throw std::runtime_error(party + " has no training documents; lower n_parties or give it more data");
    }
    if (val[p].empty()) {
      throw std::runtime_error(party +
                               " has no validation documents; lower n_parties or raise data.val_fraction");
    }
    std::set<std::string> categories;
    for (size_t i : train[p]) categories.insert(corpus.docs[i].category);
    for (size_t i : val[p]) categories.insert(corpus.docs[i].category);
    parties[p] = {std::move(train[p]), std::move(val[p]), {categories.begin(), categories.end()}};
  }
  return parties;
}

Corpus load_party_corpora(const PartySplitConfig& cfg, int only) {
  validate(cfg);
  if (cfg.mode != "paths")
    throw std::runtime_error("load_party_corpora needs mode \"paths\", got \"" + cfg.mode + "\"");
  Corpus pooled;
  std::vector<std::string> names;
  for (size_t p = 0; p < cfg.paths.size(); ++p) {
    if (only >= 0 && p != (size_t)only) continue;
    const fs::path path(cfg.paths[p]);
    Corpus corpus;
    if (fs::is_directory(path)) {
      corpus = load_text_dir(path.string());
    } else if (fs::is_regular_file(path) && path.extension() == ".jsonl") {
      corpus = load_jsonl(path.string());
    } else {
      throw std::runtime_error(
          "config key 'parties.paths[" + std::to_string(p) + "]': " + path.string() +
          (fs::exists(path) ? " is neither a directory nor a .jsonl file" : " not found"));
    }
    names.push_back(corpus.name);
    for (Document& doc : corpus.docs) {
      pooled.docs.push_back({party_prefix(p) + doc.id, party_prefix(p) + doc.category, std::move(doc.text)});
    }
  }
  pooled.name = "parties(" + join(names) + ")";
  return pooled;
}

}  // namespace pcmoe::data
