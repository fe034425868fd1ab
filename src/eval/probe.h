// The audit's learned attack models: a softmax classifier from a received vector (a hidden state
// or a gradient row) to a token, linear or with one ReLU hidden layer, trained with Adam on
// minibatches of what the attacker can compute on public text. Plain forward/backward over flat
// arrays, like the engine's layers.
#pragma once
#include <cstdint>
#include <vector>

namespace pcmoe::eval {

struct ProbeConfig {
  int hidden = 0;     // 0: linear (a linear probe); otherwise the width of the ReLU layer (an MLP)
  int epochs = 4;
  int batch = 256;
  float lr = 2e-3f;
  uint64_t seed = 1;
};

class Probe {
 public:
  Probe(int in, int classes, const ProbeConfig& cfg);
  // x[n, in] with labels y[n]; returns the mean cross-entropy of the last epoch.
  float train(const float* x, const int32_t* y, int n);
  // logits[n, classes] of x[n, in].
  void logits(const float* x, int n, float* out) const;
  int classes() const { return classes_; }

 private:
  int in_, classes_;
  ProbeConfig cfg_;
  std::vector<float> w1_, b1_, w2_, b2_;  // hidden == 0: only w2 [classes, in], b2
};

// Over rows of scores[n, classes]: the fraction whose label is the arg max, and within the 10 highest.
struct TopK {
  double top1 = 0, top10 = 0;
  int64_t n = 0;
};
TopK topk_hits(const float* scores, const int32_t* labels, int n, int classes);

// The best guesses' hit rates without looking at the vectors: the victim's own most frequent
// labels (top-1: the largest frequency; top-10: the sum of the ten largest).
TopK chance_level(const std::vector<int32_t>& labels, int classes);

}  // namespace pcmoe::eval
