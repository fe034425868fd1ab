#include "eval/routing_trace.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "tensor/gemm.h"

namespace pcmoe::eval {
namespace {

std::vector<float> unit_rows(const std::vector<float>& x, int C) {
  std::vector<float> y(x);
  for (size_t i = 0; i < y.size() / C; ++i) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += (double)y[i * C + c] * y[i * C + c];
    const float s = ss > 0 ? (float)(1 / std::sqrt(ss)) : 0.f;
    for (int c = 0; c < C; ++c) y[i * C + c] *= s;
  }
  return y;
}

}  // namespace

LinkCandidates nearest_previous(const LayerRows& prev, const LayerRows& next, int C, float band) {
  const int np = prev.n(), nn = next.n();
  LinkCandidates c;
  c.best.assign(nn, -1);
  c.truth.assign(nn, -1);
  c.cosine.assign(nn, -2.f);
  if (np == 0 || nn == 0) return c;
  const std::vector<float> a = unit_rows(next.state, C), b = unit_rows(prev.state, C);
  std::vector<float> cos((size_t)nn * np);
  matmul_nt(cos.data(), a.data(), b.data(), nn, np, C, false);
  std::map<int, int> prev_at;
  for (int j = 0; j < np; ++j) prev_at[prev.position[j]] = j;
  for (int i = 0; i < nn; ++i) {
    const float* row = cos.data() + (size_t)i * np;
    for (int j = 0; j < np; ++j)
      if (std::abs(prev.place[j] - next.place[i]) <= band && row[j] > c.cosine[i]) c.best[i] = j, c.cosine[i] = row[j];
    const auto it = prev_at.find(next.position[i]);
    if (it != prev_at.end()) c.truth[i] = it->second;
  }
  return c;
}

float fit_place_band(const std::vector<Trace>& traces, int m) {
  std::vector<float> gaps;
  for (const Trace& t : traces) {
    std::map<int, float> prev_place;
    for (int j = 0; j < t[m - 1].n(); ++j) prev_place[t[m - 1].position[j]] = t[m - 1].place[j];
    for (int i = 0; i < t[m].n(); ++i) {
      const auto it = prev_place.find(t[m].position[i]);
      if (it != prev_place.end()) gaps.push_back(std::abs(it->second - t[m].place[i]));
    }
  }
  // The largest gap seen, with a quarter more: a rank's drift within a group is a random walk,
  // and a victim's batch may wander further than any public one did.
  return gaps.empty() ? 1.f : 1.25f * *std::max_element(gaps.begin(), gaps.end());
}

LinkScore score_links(const LinkCandidates& c, float threshold) {
  LinkScore s;
  int64_t right = 0, links = 0, right_links = 0, with_partner = 0;
  for (size_t i = 0; i < c.best.size(); ++i) {
    const bool link = c.best[i] >= 0 && c.cosine[i] >= threshold, partner = c.truth[i] >= 0;
    with_partner += partner;
    links += link;
    right_links += link && c.best[i] == c.truth[i];
    right += link ? c.best[i] == c.truth[i] : !partner;
  }
  s.rows = (int64_t)c.best.size();
  if (s.rows == 0) return s;
  s.accuracy = (double)right / s.rows;
  s.baseline = (double)(s.rows - with_partner) / s.rows;
  s.precision = links ? (double)right_links / links : 0;
  s.recall = with_partner ? (double)right_links / with_partner : 0;
  return s;
}

float fit_link_threshold(const LinkCandidates& c) {
  // Sweep the threshold over the sorted cosines: lowering it past a row links that row, which
  // gains a right decision if the link is right and loses one if the row had no partner.
  std::vector<int> order(c.best.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = (int)i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return c.cosine[a] > c.cosine[b]; });
  int64_t gain = 0, best_gain = 0;
  float best = 2.f;  // above every cosine: link nothing
  for (int i : order) {
    gain += (c.best[i] == c.truth[i]) - (c.truth[i] < 0);
    if (gain > best_gain) best_gain = gain, best = c.cosine[i];
  }
  return best;
}

std::vector<std::vector<std::vector<std::vector<int>>>> RouteTable::keys(const Trace& t, const Linking& link,
                                                                         int C) const {
  // back[m][i]: the row of layer m-1 that row i of layer m links to; ahead[m][j]: the row of
  // layer m+1 with the highest cosine among those that link to row j.
  std::vector<std::vector<int>> back(L_), ahead(L_);
  for (int m = 0; m < L_; ++m) {
    back[m].assign(t[m].n(), -1);
    ahead[m].assign(t[m].n(), -1);
  }
  for (int m = 1; m < L_; ++m) {
    const LinkCandidates c = nearest_previous(t[m - 1], t[m], C, link.bands[m]);
    std::vector<float> best_cos(t[m - 1].n(), -2.f);
    for (int i = 0; i < t[m].n(); ++i) {
      if (c.best[i] < 0 || c.cosine[i] < link.thresholds[m]) continue;
      back[m][i] = c.best[i];
      if (c.cosine[i] > best_cos[c.best[i]]) best_cos[c.best[i]] = c.cosine[i], ahead[m - 1][c.best[i]] = i;
    }
  }
  std::vector<std::vector<std::vector<std::vector<int>>>> out(L_);
  for (int m = 0; m < L_; ++m) {
    out[m].resize(t[m].n());
    for (int i = 0; i < t[m].n(); ++i) {
      std::vector<int> key(L_ + 1, 0);
      key[0] = m;
      for (int l = m, r = i; l >= 0 && r >= 0; r = back[l][r], --l) key[l + 1] = t[l].code[r];
      for (int l = m, r = i; l < L_ && r >= 0; r = ahead[l][r], ++l) key[l + 1] = t[l].code[r];
      // Back off: drop the layer farthest from m (the later one on a tie), down to m alone.
      std::vector<int> drop;
      for (int d = L_ - 1; d >= 1; --d) {
        if (m + d < L_) drop.push_back(m + d);
        if (m - d >= 0) drop.push_back(m - d);
      }
      out[m][i].push_back(key);
      for (int l : drop) {
        key[l + 1] = -1;
        out[m][i].push_back(key);
      }
    }
  }
  return out;
}

void RouteTable::add(const Trace& t, const Linking& link, int C) {
  const auto k = keys(t, link, C);
  for (int m = 0; m < L_; ++m)
    for (int i = 0; i < t[m].n(); ++i)
      for (const std::vector<int>& key : k[m][i]) ++counts_[key][t[m].token[i]];
}

std::vector<float> RouteTable::scores(const Trace& t, const Linking& link, int C, int m) const {
  const auto k = keys(t, link, C);
  std::vector<float> out((size_t)t[m].n() * V_, 0.f);
  for (int i = 0; i < t[m].n(); ++i) {
    // From the layer alone up to the whole chain, each seen tuple's counts refine the shorter
    // tuple's distribution, which weighs as kPrior rows: a tuple seen a few times on public text
    // only nudges it.
    float* p = out.data() + (size_t)i * V_;
    for (auto key = k[m][i].rbegin(); key != k[m][i].rend(); ++key) {
      const auto it = counts_.find(*key);
      if (it == counts_.end()) continue;
      int64_t total = 0;
      for (const auto& [token, n] : it->second) total += n;
      for (int v = 0; v < V_; ++v) p[v] *= (float)(kPrior / (total + kPrior));
      for (const auto& [token, n] : it->second) p[token] += (float)(n / (total + kPrior));
    }
  }
  return out;
}

}  // namespace pcmoe::eval
