#include "eval/probe.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/layers.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"

namespace pcmoe::eval {
namespace {

// Adam over one flat tensor (no weight decay: the probes are small and trained briefly).
struct Adam {
  std::vector<float> m, v;
  void step(std::vector<float>& w, const std::vector<float>& g, float lr, int64_t t) {
    if (m.empty()) m.assign(w.size(), 0.f), v.assign(w.size(), 0.f);
    const float b1 = 0.9f, b2 = 0.999f, c1 = 1 - std::pow(b1, (float)t), c2 = 1 - std::pow(b2, (float)t);
    for (size_t i = 0; i < w.size(); ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + 1e-8f);
    }
  }
};

void add_bias(float* y, const float* b, int n, int d) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) y[(size_t)i * d + j] += b[j];
}

void bias_grad(float* db, const float* dy, int n, int d) {
  std::fill_n(db, d, 0.f);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < d; ++j) db[j] += dy[(size_t)i * d + j];
}

void init_uniform(std::vector<float>& w, int fan_in, Rng& rng) {
  const float a = 1.f / std::sqrt((float)fan_in);
  for (float& x : w) x = (2 * (float)rng.uniform_open() - 1) * a;
}

}  // namespace

Probe::Probe(int in, int classes, const ProbeConfig& cfg) : in_(in), classes_(classes), cfg_(cfg) {
  Rng rng(cfg.seed);
  const int last_in = cfg.hidden > 0 ? cfg.hidden : in;
  if (cfg.hidden > 0) {
    w1_.resize((size_t)cfg.hidden * in);
    b1_.assign(cfg.hidden, 0.f);
    init_uniform(w1_, in, rng);
  }
  w2_.resize((size_t)classes * last_in);
  b2_.assign(classes, 0.f);
  init_uniform(w2_, last_in, rng);
}

void Probe::logits(const float* x, int n, float* out) const {
  const int H = cfg_.hidden;
  if (H == 0) {
    matmul_nt(out, x, w2_.data(), n, classes_, in_, false);
  } else {
    std::vector<float> h((size_t)n * H);
    matmul_nt(h.data(), x, w1_.data(), n, H, in_, false);
    add_bias(h.data(), b1_.data(), n, H);
    for (float& v : h) v = std::max(v, 0.f);
    matmul_nt(out, h.data(), w2_.data(), n, classes_, H, false);
  }
  add_bias(out, b2_.data(), n, classes_);
}

float Probe::train(const float* x, const int32_t* y, int n) {
  const int H = cfg_.hidden, B = std::min(cfg_.batch, n), last_in = H > 0 ? H : in_;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  Rng rng(cfg_.seed + 1);
  std::vector<float> xb((size_t)B * in_), h((size_t)B * std::max(H, 1)), logit((size_t)B * classes_);
  std::vector<float> dh((size_t)B * std::max(H, 1));
  std::vector<int32_t> yb(B);
  std::vector<float> gw1(w1_.size()), gb1(b1_.size()), gw2(w2_.size()), gb2(b2_.size());
  Adam a1, ab1, a2, ab2;
  int64_t t = 0;
  float last = 0;
  for (int epoch = 0; epoch < cfg_.epochs; ++epoch) {
    for (int i = n - 1; i > 0; --i) std::swap(order[i], order[rng.next_u64() % (uint64_t)(i + 1)]);
    double sum = 0;
    int batches = 0;
    for (int start = 0; start + B <= n; start += B) {
      for (int b = 0; b < B; ++b) {
        std::copy_n(x + (size_t)order[start + b] * in_, in_, xb.data() + (size_t)b * in_);
        yb[b] = y[order[start + b]];
      }
      const float* top = xb.data();
      if (H > 0) {
        matmul_nt(h.data(), xb.data(), w1_.data(), B, H, in_, false);
        add_bias(h.data(), b1_.data(), B, H);
        for (float& v : h) v = std::max(v, 0.f);
        top = h.data();
      }
      matmul_nt(logit.data(), top, w2_.data(), B, classes_, last_in, false);
      add_bias(logit.data(), b2_.data(), B, classes_);
      sum += cross_entropy_forward_backward(logit.data(), yb.data(), B, classes_, 1.f);
      ++batches;
      matmul_tn(gw2.data(), logit.data(), top, classes_, last_in, B, false);
      bias_grad(gb2.data(), logit.data(), B, classes_);
      if (H > 0) {
        matmul_nn(dh.data(), logit.data(), w2_.data(), B, H, classes_, false);
        for (size_t i = 0; i < (size_t)B * H; ++i)
          if (h[i] <= 0) dh[i] = 0;
        matmul_tn(gw1.data(), dh.data(), xb.data(), H, in_, B, false);
        bias_grad(gb1.data(), dh.data(), B, H);
      }
      ++t;
      a2.step(w2_, gw2, cfg_.lr, t);
      ab2.step(b2_, gb2, cfg_.lr, t);
      if (H > 0) {
        a1.step(w1_, gw1, cfg_.lr, t);
        ab1.step(b1_, gb1, cfg_.lr, t);
      }
    }
    last = batches ? (float)(sum / batches) : 0.f;
  }
  return last;
}

TopK topk_hits(const float* scores, const int32_t* labels, int n, int classes) {
  TopK r;
  r.n = n;
  for (int i = 0; i < n; ++i) {
    const float* s = scores + (size_t)i * classes;
    const float own = s[labels[i]];
    // Ties are broken at random, in expectation: a constant score earns only its share.
    int higher = 0, equal = 0;
    for (int c = 0; c < classes; ++c) {
      higher += s[c] > own;
      equal += s[c] == own;
    }
    const double p1 = higher == 0 ? 1.0 / equal : 0.0;
    const double p10 = higher >= 10 ? 0.0 : std::min(1.0, (double)(10 - higher) / equal);
    r.top1 += p1;
    r.top10 += p10;
  }
  if (n) r.top1 /= n, r.top10 /= n;
  return r;
}

TopK chance_level(const std::vector<int32_t>& labels, int classes) {
  std::vector<int64_t> count(classes, 0);
  for (int32_t y : labels) ++count[y];
  std::sort(count.begin(), count.end(), std::greater<>());
  TopK r;
  r.n = (int64_t)labels.size();
  if (labels.empty()) return r;
  r.top1 = (double)count[0] / r.n;
  for (int i = 0; i < std::min(10, classes); ++i) r.top10 += (double)count[i] / r.n;
  return r;
}

}  // namespace pcmoe::eval
