// The federated server's attack of the leakage audit (docs/audit.md): which tokens a party's
// round touched, read off the embedding rows of the update the server decodes. With a tied
// embedding every row moves (the head's softmax reaches all of them) and Adam evens out the
// step sizes, so there is no exact "non-zero row" test; the server instead fits a logistic rule
// over per-row features on an update it computes itself, from the same global model, on public
// text whose tokens it knows, and applies it to each party's update.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pcmoe::eval {

struct TokenSetScore {
  double precision = 0, recall = 0;
  int64_t predicted = 0, actual = 0;
};
TokenSetScore score_token_set(const std::vector<uint8_t>& predicted, const std::vector<uint8_t>& actual);

// Which of V tokens occur in `tokens`.
std::vector<uint8_t> tokens_present(const int32_t* tokens, size_t n, int V);

class BagOfWordsAttack {
 public:
  // delta, global: the embedding rows [V, C] of an update and of the model it started from;
  // present: the tokens that update's batches held.
  void fit(const float* delta, const float* global, const std::vector<uint8_t>& present, int V, int C);
  // The rows the rule ranks highest, as many as the fitted update's tokens.
  std::vector<uint8_t> predict(const float* delta, const float* global, int V, int C) const;

 private:
  static constexpr int kFeatures = 3;
  std::vector<std::array<double, kFeatures>> features(const float* delta, const float* global, int V, int C) const;
  std::array<double, kFeatures> mean_{}, scale_{};
  std::array<double, kFeatures + 1> w_{};  // weights, then the bias
  int expected_ = 0;                       // tokens in the server's own round
};

}  // namespace pcmoe::eval
