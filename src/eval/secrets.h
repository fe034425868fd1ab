// Which of a victim's own strings (e-mail addresses, names, numbers) the audit's attacks rebuilt
// (docs/audit.md, "Secrets"). The scorer rebuilds each victim's batches of the recorded rounds,
// finds the strings in them, and reads each string's tokens off an attack's per-row guesses.
//
// A host receives rows grouped by expert, with no token positions. Strings are reassembled here
// by the positions truth.bin holds, which the attacker does not have: the rates are what the
// attacker's guesses contain, an upper bound on what it could put back in order by itself.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <tuple>
#include <vector>

namespace pcmoe::eval {

// One line of a secrets file (a literal, matched where no letter or digit touches either end) or
// one --secrets-regex pattern (ECMAScript, matched as given).
struct Secret {
  std::string text;
  bool regex = false;
};
// The non-empty lines of `path`; throws naming the file when it cannot be read or holds none.
std::vector<Secret> read_secrets(const std::string& path);

// Where a token sits in a victim's batch of one round: the window of its turn and the slot in it
// (0..seq_len). A state row's input token sits at the row's position t, a gradient row's target
// at t + 1.
struct Slot {
  int victim = 0;
  int window = 0;
  int slot = 0;
  auto key() const { return std::tie(victim, window, slot); }
  bool operator<(const Slot& o) const { return key() < o.key(); }
};

// One attack's guesses over every layer. Where several layers guessed the same slot, the guess
// of the layer the attack scored best on at the attacker's own public text: a choice the attacker
// can make without the truth.
class Reconstruction {
 public:
  void add(const Slot& at, int32_t token, double trust);
  // The guess at a slot, or -1 where no row carrying it reached the host.
  int32_t at(const Slot& s) const;

 private:
  std::map<Slot, std::pair<double, int32_t>> best_;
};

// The top-1 token of each row of scores[n, V] (the lowest id among ties).
std::vector<int32_t> top1(const std::vector<float>& scores, int V);

// A secret found in a victim's batch: tokens [begin, end) of one window.
struct Occurrence {
  int secret = 0;
  int victim = 0;
  int window = 0;
  int begin = 0, end = 0;
  std::string matched;
};

// Every occurrence of `secrets` in windows[n_windows, T+1] of `victim`. token_text[id] is the text
// a token stands for (control tokens: a line break, so no string spans two documents); a window's
// text is its tokens' texts joined, and a match takes every token it overlaps.
std::vector<Occurrence> find_secrets(const std::vector<Secret>& secrets, const std::vector<std::string>& token_text,
                                     int victim, const int32_t* windows, int n_windows, int T);

// How many of an occurrence's tokens the reconstruction holds, right, at their slots.
int recovered_tokens(const Occurrence& o, const Reconstruction& r, const int32_t* windows, int T);

// The guessing baseline from the attacker's public text, which needs no signal: each slot's token
// guessed as the public text's most frequent successor of the true token before it (the most
// frequent public token at a window's first slot). Generous: it is handed the victim's context.
class PublicBigram {
 public:
  PublicBigram(const std::vector<int32_t>& public_tokens, int V);
  int32_t guess(const int32_t* window, int slot) const;

 private:
  std::vector<int32_t> next_;
  int32_t mode_ = 0;
};

// Renders tokens as text: a guessed token as its text, a slot no row reached as "_" per token.
std::string render(const std::vector<int32_t>& tokens, const std::vector<std::string>& token_text);

// What the host reads by itself at one layer: an attack's guesses for the rows of each expert
// group it received (a call's rows for one of its experts), in the order received, which is the
// sender's batch order with unknown gaps. No truth is needed to write it down.
struct Reading {
  double trust = -1;  // the attack's top-1 on the attacker's public text at this layer
  int layer = -1;
  std::vector<int32_t> guess;
  std::vector<int64_t> group;  // per row: record index x n_experts + expert
  std::vector<int> victim;
};

// The per-string report of `pcmoe audit --secrets` and the side-by-side samples: per recorded
// round, the victims' batches (rebuilt by the scorer), each attack's reconstruction scored
// against the secrets in them, next to the public bigram guess.
class SecretsAudit {
 public:
  SecretsAudit(std::vector<Secret> secrets, std::vector<std::string> token_text, const std::vector<int32_t>& public_tokens,
               int T);
  // Starts round `round` with victim v's batch (windows[n, T+1]); call once per victim.
  void set_batch(int64_t round, int victim, std::vector<int32_t> windows);
  // Throws unless the batch holds `token` at `at` (the recording's truth must be the batch's).
  void check(const Slot& at, int32_t token) const;
  // Scores one attack's reconstruction of the current round; keeps the best per victim for the
  // samples.
  void score(const std::string& signal, const std::string& attack, const Reconstruction& r, const Reading& reading);
  // Scores the public bigram guess (PublicBigram) of the current round's batches.
  void score_public_guess();
  // {"summary": per round, victim and attack; "per_secret": each string's results}.
  nlohmann::json report() const;
  // Writes out_dir/sample_party<v>.txt for each victim: the last scored round's best
  // reconstruction of a few windows next to the truth, and what the host reads by itself.
  void write_samples(const std::string& out_dir) const;

 private:
  struct Batch {
    std::vector<int32_t> windows;
    int n = 0;
    std::vector<Occurrence> found;
  };
  struct Best {
    double recovered = -1;
    std::string signal, attack;
    Reconstruction r;
    Reading reading;
    int64_t round = -1;
  };
  std::vector<Secret> secrets_;
  std::vector<std::string> text_;
  PublicBigram bigram_;
  int T_;
  int64_t round_ = -1;
  std::map<int, Batch> batch_;
  std::map<int, Best> best_;  // per victim, for the samples
  nlohmann::json summary_ = nlohmann::json::array(), per_secret_ = nlohmann::json::array();
};

}  // namespace pcmoe::eval
