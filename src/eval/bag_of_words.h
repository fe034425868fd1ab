// The federated server's attack of the leakage audit (docs/audit.md): which tokens a party's
// round touched, read off the update the server decodes. Nothing in an update marks a token
// exactly — with a tied embedding every row moves (the head's softmax reaches all of them) and
// Adam evens out the step sizes; a LoRA update holds no embedding rows at all — so the server
// computes per-token features of an update, fits a logistic rule over them on an update it
// computes itself, from the same global model, on public text whose tokens it knows, and
// applies the rule to each party's update.
#pragma once
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

// Per token v, features [V][k].
using TokenFeatures = std::vector<std::vector<double>>;

// Of a full-model update, from the embedding rows: delta and global [V, C], the update's rows and
// the rows of the model it started from.
TokenFeatures embedding_row_features(const float* delta, const float* global, int V, int C);

// Of a LoRA update, from the A matrices [r, C] of the adapters on the first layer's attention
// projections. Their input is the normalised embedding of the token, so a step's change of A is
// Σ_t g_t x_tᵀ over the step's tokens t: its rows lie in the span of those tokens' inputs. Per
// token and matrix, the log of the energy of the change along the token's input direction:
// inputs [V, C], the first layer's attention input of each token (any scale).
TokenFeatures lora_input_features(const std::vector<const float*>& delta_a, int r, const float* inputs, int V, int C);

class TokenRule {
 public:
  // present: the tokens of the update the features were computed from.
  void fit(const TokenFeatures& f, const std::vector<uint8_t>& present);
  // The tokens the rule ranks highest, as many as the fitted update's.
  std::vector<uint8_t> predict(const TokenFeatures& f) const;

 private:
  std::vector<double> mean_, scale_, w_;  // w_: weights, then the bias
  int expected_ = 0;                      // tokens in the server's own round
};

}  // namespace pcmoe::eval
