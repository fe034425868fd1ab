#include "eval/secrets.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <stdexcept>

namespace pcmoe::eval {

std::vector<Secret> read_secrets(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read the secrets file '" + path + "'");
  std::vector<Secret> out;
  for (std::string line; std::getline(f, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) out.push_back({line, false});
  }
  if (out.empty()) throw std::runtime_error("the secrets file '" + path + "' holds no strings");
  return out;
}

void Reconstruction::add(const Slot& at, int32_t token, double trust) {
  const auto [it, fresh] = best_.emplace(at, std::make_pair(trust, token));
  if (!fresh && trust > it->second.first) it->second = {trust, token};
}

int32_t Reconstruction::at(const Slot& s) const {
  const auto it = best_.find(s);
  return it == best_.end() ? -1 : it->second.second;
}

std::vector<int32_t> top1(const std::vector<float>& scores, int V) {
  const size_t n = scores.size() / V;
  std::vector<int32_t> out(n);
  for (size_t i = 0; i < n; ++i) {
    const float* s = scores.data() + i * V;
    out[i] = (int32_t)(std::max_element(s, s + V) - s);
  }
  return out;
}

namespace {

bool word_char(unsigned char c) { return std::isalnum(c) || c >= 0x80; }

}  // namespace

std::vector<Occurrence> find_secrets(const std::vector<Secret>& secrets, const std::vector<std::string>& token_text,
                                     int victim, const int32_t* windows, int n_windows, int T) {
  std::vector<std::regex> patterns(secrets.size());
  for (size_t k = 0; k < secrets.size(); ++k)
    if (secrets[k].regex) patterns[k] = std::regex(secrets[k].text);
  std::vector<Occurrence> out;
  for (int w = 0; w < n_windows; ++w) {
    const int32_t* tokens = windows + (size_t)w * (T + 1);
    std::string text;
    std::vector<size_t> start(T + 2);  // token t covers text[start[t], start[t + 1])
    for (int t = 0; t <= T; ++t) {
      start[t] = text.size();
      text += token_text.at(tokens[t]);
    }
    start[T + 1] = text.size();
    auto take = [&](int k, size_t a, size_t b) {
      if (b <= a) return;
      Occurrence o{k, victim, w, 0, 0, text.substr(a, b - a)};
      while (start[o.begin + 1] <= a) ++o.begin;
      o.end = o.begin;
      while (o.end <= T && start[o.end] < b) ++o.end;
      out.push_back(o);
    };
    for (size_t k = 0; k < secrets.size(); ++k) {
      if (secrets[k].regex) {
        for (auto it = std::sregex_iterator(text.begin(), text.end(), patterns[k]); it != std::sregex_iterator(); ++it)
          take((int)k, (size_t)it->position(), (size_t)(it->position() + it->length()));
        continue;
      }
      const std::string& s = secrets[k].text;
      for (size_t a = text.find(s); a != std::string::npos; a = text.find(s, a + 1)) {
        const size_t b = a + s.size();
        const bool whole = (a == 0 || !word_char(text[a - 1]) || !word_char(s.front())) &&
                           (b == text.size() || !word_char(text[b]) || !word_char(s.back()));
        if (whole) take((int)k, a, b);
      }
    }
  }
  return out;
}

int recovered_tokens(const Occurrence& o, const Reconstruction& r, const int32_t* windows, int T) {
  const int32_t* tokens = windows + (size_t)o.window * (T + 1);
  int right = 0;
  for (int t = o.begin; t < o.end; ++t) right += r.at({o.victim, o.window, t}) == tokens[t];
  return right;
}

PublicBigram::PublicBigram(const std::vector<int32_t>& tokens, int V) : next_(V, -1) {
  std::vector<int64_t> unigram(V, 0);
  for (int32_t t : tokens) ++unigram[t];
  mode_ = (int32_t)(std::max_element(unigram.begin(), unigram.end()) - unigram.begin());
  std::vector<uint64_t> pairs;
  pairs.reserve(tokens.size());
  for (size_t i = 1; i < tokens.size(); ++i) pairs.push_back((uint64_t)tokens[i - 1] * V + (uint64_t)tokens[i]);
  std::sort(pairs.begin(), pairs.end());
  std::vector<int64_t> best(V, 0);
  for (size_t i = 0; i < pairs.size();) {
    size_t j = i;
    while (j < pairs.size() && pairs[j] == pairs[i]) ++j;
    const int prev = (int)(pairs[i] / V);
    if ((int64_t)(j - i) > best[prev]) best[prev] = (int64_t)(j - i), next_[prev] = (int32_t)(pairs[i] % V);
    i = j;
  }
}

int32_t PublicBigram::guess(const int32_t* window, int slot) const {
  if (slot == 0) return mode_;
  const int32_t n = next_[window[slot - 1]];
  return n < 0 ? mode_ : n;
}

std::string render(const std::vector<int32_t>& tokens, const std::vector<std::string>& token_text) {
  std::string out;
  for (int32_t t : tokens) {
    const std::string s = t < 0 ? std::string("_") : token_text.at(t);
    for (char c : s) out += c == '\n' ? std::string(" | ") : std::string(1, c);
  }
  return out;
}

SecretsAudit::SecretsAudit(std::vector<Secret> secrets, std::vector<std::string> token_text,
                           const std::vector<int32_t>& public_tokens, int T)
    : secrets_(std::move(secrets)), text_(std::move(token_text)), bigram_(public_tokens, (int)text_.size()), T_(T) {
  for (const Secret& s : secrets_)
    per_secret_.push_back({{"secret", s.text}, {"regex", s.regex}, {"results", nlohmann::json::array()}});
}

void SecretsAudit::set_batch(int64_t round, int victim, std::vector<int32_t> windows) {
  if (round != round_) batch_.clear();
  round_ = round;
  Batch& b = batch_[victim];
  b.n = (int)(windows.size() / (T_ + 1));
  b.windows = std::move(windows);
  b.found = find_secrets(secrets_, text_, victim, b.windows.data(), b.n, T_);
}

void SecretsAudit::check(const Slot& at, int32_t token) const {
  const auto it = batch_.find(at.victim);
  if (it == batch_.end() || at.window >= it->second.n || at.slot > T_ ||
      it->second.windows[(size_t)at.window * (T_ + 1) + at.slot] != token)
    throw std::runtime_error("the recording's truth does not match the batches the run's config draws (party " +
                             std::to_string(at.victim) + ", round " + std::to_string(round_) + ")");
}

void SecretsAudit::score(const std::string& signal, const std::string& attack, const Reconstruction& r,
                         const Reading& reading) {
  for (const auto& [v, b] : batch_) {
    // How much of the victim's whole batch this attack put back at the right slots.
    int64_t right = 0;
    for (int w = 0; w < b.n; ++w)
      for (int t = 0; t <= T_; ++t) right += r.at({v, w, t}) == b.windows[(size_t)w * (T_ + 1) + t];
    const double batch_recovered = (double)right / ((double)b.n * (T_ + 1));
    int exact = 0, partly = 0, tokens = 0, tokens_right = 0;
    std::map<int, std::vector<const Occurrence*>> by_secret;
    for (const Occurrence& o : b.found) by_secret[o.secret].push_back(&o);
    for (const auto& [k, occs] : by_secret) {
      int k_exact = 0;
      double best = 0, mean = 0;
      const Occurrence* shown = occs[0];
      for (const Occurrence* o : occs) {
        const int n = o->end - o->begin, got = recovered_tokens(*o, r, b.windows.data(), T_);
        const double f = (double)got / n;
        k_exact += got == n;
        partly += got > 0 && got < n;
        tokens += n;
        tokens_right += got;
        mean += f / occs.size();
        if (f > best) best = f, shown = o;
      }
      exact += k_exact;
      std::vector<int32_t> truth, guess;
      for (int t = shown->begin; t < shown->end; ++t) {
        truth.push_back(b.windows[(size_t)shown->window * (T_ + 1) + t]);
        guess.push_back(r.at({v, shown->window, t}));
      }
      per_secret_[k]["results"].push_back({{"round", round_}, {"victim", v}, {"signal", signal}, {"attack", attack},
                                           {"occurrences", occs.size()}, {"exact", k_exact}, {"best_fraction", best},
                                           {"mean_fraction", mean}, {"truth_tokens", render(truth, text_)},
                                           {"best_guess", render(guess, text_)}});
    }
    summary_.push_back({{"round", round_}, {"victim", v}, {"signal", signal}, {"attack", attack},
                        {"occurrences", b.found.size()}, {"secrets_found", by_secret.size()}, {"exact", exact},
                        {"partly", partly}, {"tokens", tokens}, {"tokens_recovered", tokens_right},
                        {"batch_tokens_recovered", batch_recovered}});
    Best& keep = best_[v];
    if (signal != "none" && (round_ != keep.round || batch_recovered > keep.recovered))
      keep = {batch_recovered, signal, attack, r, reading, round_};
  }
}

void SecretsAudit::score_public_guess() {
  Reconstruction r;
  for (const auto& [v, b] : batch_)
    for (int w = 0; w < b.n; ++w)
      for (int t = 0; t <= T_; ++t) r.add({v, w, t}, bigram_.guess(b.windows.data() + (size_t)w * (T_ + 1), t), 0);
  score("none", "public bigram", r, {});
}

nlohmann::json SecretsAudit::report() const {
  nlohmann::json found = nlohmann::json::array();
  for (const nlohmann::json& s : per_secret_)
    if (!s["results"].empty()) found.push_back(s);
  return {{"patterns", secrets_.size()}, {"found", found.size()}, {"summary", summary_}, {"per_secret", found}};
}

void SecretsAudit::write_samples(const std::string& out_dir) const {
  for (const auto& [v, b] : batch_) {
    const auto it = best_.find(v);
    if (it == best_.end()) continue;
    const Best& best = it->second;
    std::ofstream f(out_dir + "/sample_party" + std::to_string(v) + ".txt");
    f << "SENSITIVE: the 'truth' lines are party " << v << "'s own text. Keep this file with party " << v
      << "; do not send it to the other parties.\n\n"
      << "What party " << v << "'s text looks like to the curious host in round " << round_ << ", by its best attack here ("
      << best.signal << ", " << best.attack << ": " << (int)(100 * best.recovered + 0.5)
      << "% of this batch's tokens at the right place).\n"
      << "'attacker' places each guess at its token's position, which only the scorer knows (truth.bin): a host\n"
      << "receives rows grouped by expert without positions. '_' marks a token no row of which reached the host.\n"
      << "Where several layers guessed a token, the guess of the layer the attack does best on at public text.\n";
    // The windows holding the most secrets, else the first ones.
    std::vector<int> windows;
    std::map<int, int> count;
    for (const Occurrence& o : b.found) ++count[o.window];
    std::vector<std::pair<int, int>> order;
    for (const auto& [w, c] : count) order.push_back({-c, w});
    std::sort(order.begin(), order.end());
    for (const auto& [c, w] : order) windows.push_back(w);
    for (int w = 0; w < b.n && windows.size() < 3; ++w)
      if (!count.count(w)) windows.push_back(w);
    windows.resize(std::min<size_t>(windows.size(), 3));
    for (int w : windows) {
      std::vector<int32_t> truth(b.windows.begin() + (size_t)w * (T_ + 1), b.windows.begin() + (size_t)(w + 1) * (T_ + 1));
      std::vector<int32_t> guess;
      for (int t = 0; t <= T_; ++t) guess.push_back(best.r.at({v, w, t}));
      f << "\nwindow " << w << (count.count(w) ? " (holds " + std::to_string(count[w]) + " of the secrets)" : std::string())
        << "\ntruth:    " << render(truth, text_) << "\nattacker: " << render(guess, text_) << "\n";
    }
    // What the host can write down without the truth: one expert group, in the order received.
    const Reading& rd = best.reading;
    std::vector<int32_t> group;
    int64_t first = -1;
    for (size_t i = 0; i < rd.guess.size() && group.size() < 64; ++i) {
      if (rd.victim[i] != v) continue;
      if (first < 0) first = rd.group[i];
      if (rd.group[i] == first) group.push_back(rd.guess[i]);
    }
    if (group.empty()) continue;
    f << "\nWhat the host writes down by itself (no truth used): the first " << group.size()
      << " rows of one expert group of party " << v << "'s call at layer " << rd.layer
      << ", decoded by the same attack, in the order received (the sender's batch order; how many tokens lie between "
         "two rows is unknown):\n";
    for (size_t i = 0; i < group.size(); ++i) f << (i ? " · " : "") << render({group[i]}, text_);
    f << "\n";
  }
}

}  // namespace pcmoe::eval
