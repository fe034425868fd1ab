// PC-MoE in one process against the centralised model: the same step, the same numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <unordered_set>

#include "collab/session.h"
#include "model/local_experts.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/local_model.h"
#include "train/step.h"
#include "hosts.h"
#include "tiny.h"

using namespace pcmoe;

namespace {

ModelConfig tiny_model(int n_experts, int top_k) {
  ModelConfig m = tiny::model();
  m.n_layers = 3;
  m.n_experts = n_experts;
  m.top_k = top_k;
  m.tie_embeddings = false;
  return m;
}

TrainConfig tiny_train() {
  TrainConfig t = tiny::train();
  t.batch_size = 3;
  t.grad_accum = 2;
  t.warmup = 2;
  t.grad_clip = 0.5f;  // active: the norms of these models are larger
  t.seed = 11;
  return t;
}

// The centralised twin: one ParamSet with every expert, computed locally.
struct Central : LocalModel {
  using LocalModel::LocalModel;
  TurnResult step(const TrainConfig& t, const int32_t* windows, int64_t step) {
    TurnResult r;
    r.loss = accumulate_gradients(model, params, windows, t.batch_size, t.grad_accum);
    UpdateStats u = apply_update(params, opt, t, step);
    r.grad_norm = u.grad_norm;
    r.lr = u.lr;
    return r;
  }
};

// max |a - b| / max |b| over one tensor; 0 when bitwise equal.
double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

// Every tensor of the centralised model against where it lives in the session; values and
// gradients. Returns the largest relative error seen.
double compare_all(Central& c, PcMoeSession& s, int backbone_of) {
  double worst = 0;
  for (const ParamTensor& t : c.params.tensors()) {
    ParamSet* where = nullptr;
    if (s.party(backbone_of).backbone.has(t.name)) where = &s.party(backbone_of).backbone;
    for (int h = 0; h < s.n_parties() && !where; ++h)
      if (s.party(h).host.params().has(t.name)) where = &s.party(h).host.params();
    EXPECT_NE(where, nullptr) << t.name;
    if (!where) continue;
    const double ev = rel_err(where->value(t.name), c.params.value(t.name), t.numel);
    const double eg = rel_err(where->grad(t.name), c.params.grad(t.name), t.numel);
    EXPECT_LE(ev, 1e-6) << "value of " << t.name;
    EXPECT_LE(eg, 1e-6) << "gradient of " << t.name;
    worst = std::max({worst, ev, eg});
  }
  return worst;
}

}  // namespace

TEST(Collab, RemoteExpertsStepEqualsAllLocalStep) {
  set_num_threads(2);
  const ModelConfig m = tiny_model(6, 2);
  const TrainConfig t = tiny_train();
  Central c(m, t);
  InProcessTransport net;
  PcMoeSession s(m, t, 3, net);
  const auto w = tiny::windows(m, t, 5);
  // Party 1 trains: experts 1 and 4 are its own, the rest live on parties 0 and 2.
  const TurnResult a = s.train_turn(test::start_at_turn_of(s, t.seed, 1), w.data());
  const TurnResult b = c.step(t, w.data(), 0);
  EXPECT_EQ(a.loss.total, b.loss.total);
  EXPECT_EQ(a.loss.ce, b.loss.ce);
  EXPECT_EQ(a.grad_norm, b.grad_norm);
  EXPECT_LT(a.grad_norm, 1e9);
  EXPECT_GT(a.grad_norm, t.grad_clip);  // clipping was active
  // Same expert rows in the same order: bitwise equal, not just close.
  EXPECT_EQ(compare_all(c, s, 1), 0.0);
  EXPECT_GT(net.stats().bytes_sent(1), 0u);
}

TEST(Collab, OnePartyReproducesCentralisedTrainingExactly) {
  set_num_threads(2);
  const ModelConfig m = tiny_model(4, 2);
  const TrainConfig t = tiny_train();
  Central c(m, t);
  InProcessTransport net;
  PcMoeSession s(m, t, 1, net);
  for (int step = 0; step < 5; ++step) {
    const auto w = tiny::windows(m, t, 100 + step);
    const TurnResult a = s.train_turn(step, w.data());
    const TurnResult b = c.step(t, w.data(), step);
    ASSERT_EQ(a.loss.total, b.loss.total) << "step " << step;
    ASSERT_EQ(a.lr, b.lr);
  }
  EXPECT_EQ(compare_all(c, s, 0), 0.0);
  EXPECT_EQ(net.stats().total_bytes(), 0u);  // nothing crosses: there is no other party
}

TEST(Collab, SkewedRoutingAndIdleHostsMatchTheReference) {
  set_num_threads(2);
  // An all-zero router gives every expert the same probability; ties go to the lower index,
  // so every token picks experts 0 and 1: hosts 0 and 1 get every row, hosts 2 and 3 none.
  const ModelConfig m = tiny_model(8, 2);
  const TrainConfig t = tiny_train();
  Central c(m, t);
  InProcessTransport net;
  PcMoeSession s(m, t, 4, net);
  for (int l = 0; l < m.n_layers; ++l) {
    std::memset(c.params.value(layer_param(l, "router")), 0, sizeof(float) * m.n_experts * m.d_model);
    std::memset(s.party(2).backbone.value(layer_param(l, "router")), 0, sizeof(float) * m.n_experts * m.d_model);
  }
  const auto w = tiny::windows(m, t, 9);
  const TurnResult a = s.train_turn(test::start_at_turn_of(s, t.seed, 2), w.data());
  const TurnResult b = c.step(t, w.data(), 0);
  EXPECT_EQ(a.loss.total, b.loss.total);
  const MoeSaved& routing = s.party(2).model.moe_saved(0);
  const int N = t.batch_size * m.seq_len;
  EXPECT_EQ(routing.offsets[1], N);      // expert 0: every token
  EXPECT_EQ(routing.offsets[2], 2 * N);  // expert 1: every token
  EXPECT_EQ(routing.offsets[m.n_experts], 2 * N);
  for (int h : {2, 3})  // hosts that got no row at all: no expert call reached them
    EXPECT_EQ(net.stats().by_kind_pair.count({MsgKind::kExpertForward, 2, h}), 0u);
  EXPECT_EQ(net.stats().by_kind_pair.count({MsgKind::kExpertForward, 2, 0}), 1u);
  EXPECT_LE(compare_all(c, s, 2), 1e-6);
}

TEST(Collab, OnlyRoutedHiddenStatesTheirGradientsAndControlCross) {
  set_num_threads(2);
  const ModelConfig m = tiny_model(4, 2);
  TrainConfig t = tiny_train();
  t.grad_accum = 1;
  InProcessTransport net;
  PcMoeSession s(m, t, 2, net);
  std::vector<test::Crossing> seen;
  test::record_crossings(net, seen);
  const auto w = tiny::windows(m, t, 21);
  const ParamSet& bb = s.party(0).backbone;
  const std::vector<float> bb_before(bb.values(), bb.values() + bb.numel());
  s.train_turn(test::start_at_turn_of(s, t.seed, 0), w.data());

  // A centralised twin with the same initial weights, recording what reaches its experts.
  struct Recording final : ExpertBackend {
    ExpertBackend& inner;
    int E, C;
    std::map<int, std::vector<float>>& rows;
    std::map<int, std::vector<int>>& offs;
    Recording(ExpertBackend& in, int e, int c, std::map<int, std::vector<float>>& r, std::map<int, std::vector<int>>& o)
        : inner(in), E(e), C(c), rows(r), offs(o) {}
    void forward(int layer, const int* offsets, const float* x, float* y) override {
      rows[layer].assign(x, x + (size_t)offsets[E] * C);
      offs[layer].assign(offsets, offsets + E + 1);
      inner.forward(layer, offsets, x, y);
    }
    void backward(int layer, const int* offsets, const float* dy, float* dx) override {
      inner.backward(layer, offsets, dy, dx);
    }
    void backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit, int n_units,
                             float* dx, double* unit_sq) override {
      inner.backward_unit_norms(layer, offsets, dy, unit, n_units, dx, unit_sq);
    }
    void add_clipped_grads(int layer, const float* factor) override { inner.add_clipped_grads(layer, factor); }
  };
  std::map<int, std::vector<float>> twin_rows;
  std::map<int, std::vector<int>> twin_offsets;
  ParamSet twin_params(m, ParamSelection{});
  twin_params.init(t.seed);
  LocalExperts twin_local(m, twin_params, t.batch_size * m.seq_len * m.top_k);
  Recording twin_experts(twin_local, m.n_experts, m.d_model, twin_rows, twin_offsets);
  Model twin(m, twin_params, twin_experts, t.batch_size);
  twin.forward(w.data(), t.batch_size, 1.0f);

  const CollabParty& p0 = s.party(0);
  const size_t C = m.d_model;
  uint64_t expected_expert_bytes = 0;
  for (int l = 0; l < m.n_layers; ++l) {
    const MoeSaved& r = p0.model.moe_saved(l);
    const int remote_rows = (r.offsets[2] - r.offsets[1]) + (r.offsets[4] - r.offsets[3]);  // experts 1, 3
    ASSERT_GT(remote_rows, 0);
    // request header (layer, k, k counts) + rows, and the same rows back; forward and backward.
    expected_expert_bytes += 2 * ((8 + 4 * 2) + 2 * remote_rows * C * 4);
  }
  uint64_t expert_bytes = 0, control_bytes = 0;
  std::set<std::tuple<int, int>> pairs;
  for (const test::Crossing& x : seen) {
    pairs.insert({x.from, x.to});
    if (x.kind == MsgKind::kControl) {
      control_bytes += x.payload.size();
      // begin (12 bytes), grad-norm sums (4 bytes; reply 8 bytes per hosted tensor), update (12 bytes)
      EXPECT_TRUE(x.payload.size() == 4 || x.payload.size() == 12 || x.payload.size() == 0 ||
                  x.payload.size() == 8 * s.party(1).host.params().tensors().size())
          << x.payload.size();
      continue;
    }
    ASSERT_TRUE(x.kind == MsgKind::kExpertForward || x.kind == MsgKind::kExpertBackward);
    expert_bytes += x.payload.size();
  }
  EXPECT_EQ(expert_bytes, expected_expert_bytes);
  EXPECT_EQ(pairs, (std::set<std::tuple<int, int>>{{0, 1}, {1, 0}}));
  // The request floats are exactly the hidden states routed to party 1's experts, so nothing
  // else (token ids, labels, weights, gradients of the backbone) can be in them.
  for (const test::Crossing& x : seen) {
    if (x.kind != MsgKind::kExpertForward || x.response) continue;
    Reader rd(x.payload);
    const int layer = (int)rd.u32();
    ASSERT_EQ(rd.u32(), 2u);
    const int rows1 = (int)rd.u32(), rows3 = (int)rd.u32();
    const MoeSaved& r = p0.model.moe_saved(layer);
    ASSERT_EQ(rows1, r.offsets[2] - r.offsets[1]);
    ASSERT_EQ(rows3, r.offsets[4] - r.offsets[3]);
    std::vector<float> got((rows1 + rows3) * C);
    rd.floats(got.data(), got.size());
    rd.expect_end();
    // The same rows from a centralised twin fed the same windows, recorded at its experts.
    const std::vector<float>& x = twin_rows.at(layer);
    const int* off = twin_offsets.at(layer).data();
    std::vector<float> expected(x.begin() + off[1] * C, x.begin() + off[2] * C);
    expected.insert(expected.end(), x.begin() + off[3] * C, x.begin() + off[4] * C);
    EXPECT_EQ(got, expected) << "layer " << layer;
  }
  EXPECT_GT(control_bytes, 0u);
  // Nothing of the backbone crosses, in any message either way: no two consecutive floats of
  // the backbone's weights before or after the turn, or of its gradients, appear anywhere in a
  // payload. (Pairs, because two random floats coincide by chance far too often over this many
  // comparisons; pairs made only of 0 and +-1, the initial norm weights and unused rows'
  // gradients, are structural and skipped.)
  std::unordered_set<uint64_t> payload_pairs;
  for (const test::Crossing& x : seen)
    for (size_t k = 0; k + 8 <= x.payload.size(); k += 4) {
      uint64_t v;
      std::memcpy(&v, x.payload.data() + k, 8);
      payload_pairs.insert(v);
    }
  const auto structural = [](float f) { return f == 0.0f || f == 1.0f || f == -1.0f; };
  for (const float* arr : {bb_before.data(), (const float*)bb.values(), (const float*)bb.grads()}) {
    size_t checked = 0;
    for (size_t i = 0; i + 1 < bb.numel(); ++i) {
      if (structural(arr[i]) && structural(arr[i + 1])) continue;
      uint64_t v;
      std::memcpy(&v, arr + i, 8);
      ASSERT_EQ(payload_pairs.count(v), 0u) << "backbone floats " << i << ", " << i + 1 << " crossed";
      ++checked;
    }
    EXPECT_GT(checked, bb.numel() / 2);
  }
}

TEST(Collab, RoundOrderIsASeededPermutation) {
  std::set<std::vector<int>> distinct;
  for (int r = 0; r < 20; ++r) {
    auto o = round_order(3, 4, r);
    EXPECT_EQ(o, round_order(3, 4, r));
    auto sorted = o;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2, 3}));
    distinct.insert(o);
  }
  EXPECT_GT(distinct.size(), 5u);
  int differ = 0;
  for (int r = 0; r < 20; ++r) differ += round_order(3, 4, r) != round_order(4, 4, r);
  EXPECT_GT(differ, 10);  // another seed, another schedule
}

TEST(Collab, MalformedExpertCallsAreRejectedWithoutStateChange) {
  const ModelConfig m = tiny_model(4, 1);
  const TrainConfig t = tiny_train();
  ExpertHost host(m, t, 1, 2, t.batch_size * m.seq_len);
  const std::vector<float> before(host.params().values(), host.params().values() + host.params().numel());
  auto call = [&](const Bytes& b) { return host.handle(MsgKind::kExpertForward, 0, b); };
  Writer w;
  w.u32(0);
  w.u32(2);
  w.u32(1);
  w.u32(1);
  std::vector<float> rows(2 * m.d_model, 0.5f);
  w.floats(rows.data(), rows.size() - 1);  // one float short
  EXPECT_THROW(call(w.take()), std::runtime_error);
  Writer w2;
  w2.u32(7);  // no such layer
  EXPECT_THROW(call(w2.take()), std::runtime_error);
  Writer w3;
  w3.u32(0);
  w3.u32(3);  // wrong number of hosted experts
  EXPECT_THROW(call(w3.take()), std::runtime_error);
  Writer w4;
  w4.u32(0);
  w4.u32(2);
  w4.u32(0xFFFFFFF0u);  // absurd row count
  w4.u32(0);
  EXPECT_THROW(call(w4.take()), std::runtime_error);
  Writer w5;
  w5.u32(0);
  w5.u32(2);
  w5.u32(1);
  w5.u32(1);
  w5.floats(rows.data(), rows.size());
  w5.u32(0);  // trailing bytes
  EXPECT_THROW(call(w5.take()), std::runtime_error);
  Writer w6;
  w6.u32(0);
  w6.u32(2);
  w6.u32(2);
  w6.u32(0);
  w6.floats(rows.data(), rows.size());
  EXPECT_THROW(host.handle(MsgKind::kExpertBackward, 0, w6.take()), std::runtime_error);  // no forward yet
  const std::vector<float> after(host.params().values(), host.params().values() + host.params().numel());
  EXPECT_EQ(before, after);
}
