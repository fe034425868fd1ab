#include "eval/bag_of_words.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace pcmoe::eval {

TokenSetScore score_token_set(const std::vector<uint8_t>& predicted, const std::vector<uint8_t>& actual) {
  if (predicted.size() != actual.size()) throw std::logic_error("token sets of different vocabularies");
  TokenSetScore s;
  int64_t hits = 0;
  for (size_t v = 0; v < actual.size(); ++v) {
    s.predicted += predicted[v];
    s.actual += actual[v];
    hits += predicted[v] && actual[v];
  }
  s.precision = s.predicted ? (double)hits / s.predicted : 0;
  s.recall = s.actual ? (double)hits / s.actual : 0;
  return s;
}

std::vector<uint8_t> tokens_present(const int32_t* tokens, size_t n, int V) {
  std::vector<uint8_t> out(V, 0);
  for (size_t i = 0; i < n; ++i)
    if (tokens[i] >= 0 && tokens[i] < V) out[tokens[i]] = 1;
  return out;
}

// Per row: the log of its step's size, its cosine with its own weights (weight decay pulls a row
// straight back; a token's own gradient does not), and its cosine with the mean step (what the
// head's softmax pushes on every row alike).
TokenFeatures embedding_row_features(const float* delta, const float* global, int V, int C) {
  std::vector<double> mean(C, 0.0);
  for (int v = 0; v < V; ++v)
    for (int c = 0; c < C; ++c) mean[c] += delta[(size_t)v * C + c] / V;
  double mean_norm = 0;
  for (double m : mean) mean_norm += m * m;
  mean_norm = std::sqrt(mean_norm);
  TokenFeatures f(V);
  for (int v = 0; v < V; ++v) {
    const float* d = delta + (size_t)v * C;
    const float* w = global + (size_t)v * C;
    double dd = 0, ww = 0, dw = 0, dm = 0;
    for (int c = 0; c < C; ++c) dd += (double)d[c] * d[c], ww += (double)w[c] * w[c], dw += (double)d[c] * w[c], dm += d[c] * mean[c];
    const double dn = std::sqrt(dd);
    f[v] = {std::log(dn + 1e-20), dn > 0 && ww > 0 ? dw / (dn * std::sqrt(ww)) : 0,
            dn > 0 && mean_norm > 0 ? dm / (dn * mean_norm) : 0};
  }
  return f;
}

TokenFeatures lora_input_features(const std::vector<const float*>& delta_a, int r, const float* inputs, int V, int C) {
  TokenFeatures f(V, std::vector<double>(delta_a.size()));
  for (int v = 0; v < V; ++v) {
    const float* u = inputs + (size_t)v * C;
    double uu = 0;
    for (int c = 0; c < C; ++c) uu += (double)u[c] * u[c];
    for (size_t k = 0; k < delta_a.size(); ++k) {
      double energy = 0;
      for (int i = 0; i < r; ++i) {
        double dot = 0;
        for (int c = 0; c < C; ++c) dot += (double)delta_a[k][(size_t)i * C + c] * u[c];
        energy += dot * dot;
      }
      f[v][k] = std::log(energy / std::max(uu, 1e-30) + 1e-30);
    }
  }
  return f;
}

void TokenRule::fit(const TokenFeatures& f, const std::vector<uint8_t>& present) {
  const int V = (int)f.size(), K = V ? (int)f[0].size() : 0;
  expected_ = 0;
  for (uint8_t p : present) expected_ += p;
  mean_.assign(K, 0);
  scale_.assign(K, 0);
  for (int k = 0; k < K; ++k) {
    double s = 0, ss = 0;
    for (const auto& x : f) s += x[k], ss += x[k] * x[k];
    mean_[k] = s / V;
    scale_[k] = 1 / std::sqrt(std::max(ss / V - mean_[k] * mean_[k], 1e-12));
  }
  // Logistic regression by gradient descent on standardised features (a convex fit: the
  // iteration count only has to be large enough).
  w_.assign(K + 1, 0);
  for (int it = 0; it < 2000; ++it) {
    std::vector<double> g(K + 1, 0);
    for (int v = 0; v < V; ++v) {
      double z = w_[K];
      for (int k = 0; k < K; ++k) z += w_[k] * (f[v][k] - mean_[k]) * scale_[k];
      const double err = 1 / (1 + std::exp(-z)) - present[v];
      for (int k = 0; k < K; ++k) g[k] += err * (f[v][k] - mean_[k]) * scale_[k] / V;
      g[K] += err / V;
    }
    for (int k = 0; k <= K; ++k) w_[k] -= 1.0 * g[k];
  }
}

std::vector<uint8_t> TokenRule::predict(const TokenFeatures& f) const {
  const int V = (int)f.size(), K = (int)mean_.size();
  std::vector<std::pair<double, int>> z(V);
  for (int v = 0; v < V; ++v) {
    z[v] = {w_[K], v};
    for (int k = 0; k < K; ++k) z[v].first += w_[k] * (f[v][k] - mean_[k]) * scale_[k];
  }
  // The tokens ranked by the rule, as many as the server's own round touched: a party's optimizer
  // state shifts the features' scale from round to round, but rarely their order.
  const int m = std::min(V, expected_);
  std::partial_sort(z.begin(), z.begin() + m, z.end(), std::greater<>());
  std::vector<uint8_t> out(V, 0);
  for (int i = 0; i < m; ++i) out[z[i].second] = 1;
  return out;
}

}  // namespace pcmoe::eval
