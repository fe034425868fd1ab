// DP-SGD: the noise source, Poisson sampling, privacy units, the plan, and per-unit clipping in
// PC-MoE (the hosts' share of each unit's norm, the clip factors, the noise on every expert).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "collab/session.h"
#include "privacy/dp_sgd.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/local_model.h"
#include "hosts.h"
#include "tiny_dp.h"

using namespace pcmoe;

namespace {

double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, (double)std::fabs(a[i] - b[i]));
    den = std::max(den, (double)std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

}  // namespace

TEST(Noise, SeededStreamsRepeatAndDifferSecureOnesDiffer) {
  NoiseSource a = NoiseSource::seeded(1, 2), b = NoiseSource::seeded(1, 2), c = NoiseSource::seeded(1, 3);
  std::vector<double> x(1000), y(1000), z(1000);
  for (int i = 0; i < 1000; ++i) x[i] = a.normal(), y[i] = b.normal(), z[i] = c.normal();
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
  NoiseSource s1 = NoiseSource::secure(), s2 = NoiseSource::secure();
  EXPECT_NE(s1.next_u64(), s2.next_u64());
}

TEST(Noise, StandardNormalMoments) {
  NoiseSource src = NoiseSource::seeded(42, 0);
  const int n = 1 << 20;
  double sum = 0, sq = 0, four = 0;
  int beyond2 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = src.normal();
    sum += z;
    sq += z * z;
    four += z * z * z * z;
    beyond2 += std::fabs(z) > 2;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5 / std::sqrt(n));
  EXPECT_LT(std::fabs(var - 1), 5 * std::sqrt(2.0 / n));
  EXPECT_LT(std::fabs(four / n - 3), 5 * std::sqrt(96.0 / n));  // Var(z^4) = 105 - 9
  const double p2 = 0.0455002638963584;  // P(|z| > 2)
  EXPECT_LT(std::fabs((double)beyond2 / n - p2), 5 * std::sqrt(p2 * (1 - p2) / n));
}

TEST(Noise, AddsToEveryTensorAtTheRequestedScale) {
  ModelConfig m = tiny::dp_model();
  ParamSet p(m, ParamSelection{});
  p.zero_grads();
  NoiseSource src = NoiseSource::seeded(5, 5);
  add_gaussian_noise(p, src, 3.0);
  double sq = 0;
  size_t n = 0;
  for (const ParamTensor& t : p.tensors()) {
    bool all_nonzero = true;
    for (size_t i = 0; i < t.numel; ++i) {
      all_nonzero &= p.grad(t.name)[i] != 0;
      sq += (double)p.grad(t.name)[i] * p.grad(t.name)[i];
    }
    n += t.numel;
    EXPECT_TRUE(all_nonzero) << t.name;
  }
  EXPECT_NEAR(std::sqrt(sq / n), 3.0, 3.0 * 5 / std::sqrt(2.0 * n));
}

// With every gradient zero, what reaches the optimizer is the noise alone: mean 0 and standard
// deviation σC/(qN) over the coordinates.
TEST(Noise, PrivatisedZeroGradientHasTheStatedScale) {
  const ModelConfig m = tiny::dp_model();
  ParamSet p(m, ParamSelection{});
  p.zero_grads();
  PrivacyConfig c = tiny::dp_config(0.1);
  c.noise_multiplier = 1.3;
  c.clip = 0.7;
  const DpPlan plan = plan_dp(c, 1000, 10);
  NoiseSource src = noise_for(plan, 4);
  privatise_gradients(p, src, plan);
  double sum = 0, sq = 0;
  size_t n = 0;
  for (const ParamTensor& t : p.tensors())
    for (size_t i = 0; i < t.numel; ++i, ++n) {
      sum += p.grad(t.name)[i];
      sq += (double)p.grad(t.name)[i] * p.grad(t.name)[i];
    }
  const double want = 1.3 * 0.7 / (0.1 * 1000), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
  EXPECT_LT(std::fabs(mean), 5 * want / std::sqrt(n));
  EXPECT_LT(std::fabs(sd / want - 1), 5 / std::sqrt(2.0 * n));
}

TEST(PoissonSample, SeededIndependentAtRateQ) {
  const PoissonSampler s7 = PoissonSampler::seeded(7);
  const auto a = s7.sample(3, 20000, 0.1), b = PoissonSampler::seeded(7).sample(3, 20000, 0.1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, s7.sample(4, 20000, 0.1));
  EXPECT_NE(a, PoissonSampler::seeded(8).sample(3, 20000, 0.1));
  EXPECT_LT(std::fabs((double)a.size() - 2000), 5 * std::sqrt(20000 * 0.1 * 0.9));
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(PoissonSampler::seeded(1).sample(1, 100, 1.0).size(), 100u);
  // What the seeded path drew before privacy.test_seed existed (recorded from that code): seeded
  // runs keep their batches.
  ASSERT_EQ(a.size(), 1993u);
  EXPECT_EQ(std::vector<int>(a.begin(), a.begin() + 8), (std::vector<int>{7, 8, 12, 19, 24, 27, 34, 40}));
  EXPECT_EQ(a.back(), 19996);
  EXPECT_EQ(PoissonSampler::seeded(1).sample(0, 40, 0.5),
            (std::vector<int>{1, 2, 3, 4, 7, 8, 9, 10, 12, 13, 16, 17, 21, 22, 23, 25, 28, 29, 31, 35, 36}));
}

TEST(PrivacyUnits, SequenceAndDocumentLayouts) {
  const int T = 4, bos = 1;
  // Documents of 1+9, 1+2 (too short for a window) and 1+13 tokens.
  std::vector<int32_t> s;
  for (int len : {9, 2, 13}) {
    s.push_back(bos);
    for (int i = 0; i < len; ++i) s.push_back(100 + (int32_t)s.size());
  }
  const PrivacyUnits seq = make_privacy_units(s, T, "sequence", bos);
  ASSERT_EQ(seq.n_units(), (int)((s.size() - 1) / T));
  for (int w = 0; w < seq.n_units(); ++w) {
    EXPECT_EQ(seq.first[w], w);
    EXPECT_EQ(0, std::memcmp(seq.window(w), s.data() + w * T, (T + 1) * sizeof(int32_t)));
  }
  const PrivacyUnits doc = make_privacy_units(s, T, "document", bos);
  // Doc 0 at [0,10): windows at 0, 4 (4+4 < 10); doc 1 none; doc 2 at [13,27): 13, 17, 21.
  ASSERT_EQ(doc.n_units(), 2);
  EXPECT_EQ(doc.first, (std::vector<int>{0, 2, 5}));
  const int starts[] = {0, 4, 13, 17, 21};
  for (int w = 0; w < 5; ++w) EXPECT_EQ(0, std::memcmp(doc.window(w), s.data() + starts[w], (T + 1) * sizeof(int32_t)));
  EXPECT_EQ(doc.max_windows(), 3);
  EXPECT_THROW(make_privacy_units(std::vector<int32_t>(3, 5), T, "sequence", bos), std::runtime_error);
  EXPECT_THROW(make_privacy_units(s, T, "document", 7777), std::runtime_error);
}

TEST(PlanDp, CalibratesMeetsBudgetsAndRefusesTheImpossible) {
  PrivacyConfig c = tiny::dp_config(0.01);
  c.noise_multiplier = 0;
  c.epsilon = 3.0;
  c.delta = 1e-5;
  const DpPlan p = plan_dp(c, 10000, 500);
  EXPECT_TRUE(p.sigma_calibrated);
  EXPECT_LE(p.epsilon_after(500), 3.0);
  EXPECT_GE(p.epsilon_after(500), 2.99);
  EXPECT_EQ(p.budget_steps, 500);
  EXPECT_EQ(plan_dp(tiny::dp_config(0.01), 400, 10).delta, 1.0 / 4000);  // default delta 1/(10N)

  c.noise_multiplier = 1.0;  // a given σ: the budget ends the run early
  const DpPlan q = plan_dp(c, 10000, 100000);
  ASSERT_LT(q.budget_steps, 100000);
  EXPECT_LE(q.epsilon_after(q.budget_steps), 3.0);
  EXPECT_GT(q.epsilon_after(q.budget_steps + 1), 3.0);

  c.noise_multiplier = 0.1;
  c.sampling_rate = 1.0;  // one step alone spends far more than 3
  EXPECT_THROW(plan_dp(c, 100, 10), std::runtime_error);
  c.noise_multiplier = 0;
  c.epsilon = 1e-9;
  EXPECT_THROW(plan_dp(c, 100, 10), std::runtime_error);
}

// The clipped sum of a PC-MoE party (its backbone here, experts at their hosts) equals the
// centralised model's on the same units, tensor by tensor; and the hosts' messages are exactly
// what the wire format says.
TEST(DpPcMoe, ClippedSumsEqualCentralisedAndBytesMatchTheFormat) {
  const ModelConfig m = tiny::dp_model();
  const TrainConfig t = tiny::dp_train();
  const int32_t bos = 1;
  const PrivacyUnits units = make_privacy_units(tiny::documents(12, 20, bos, 5), m.seq_len, "document", bos);
  const DpPlan plan = plan_dp(tiny::dp_config(), units.n_units(), 10);
  const int cap = std::max(t.batch_size, units.max_windows());
  const std::vector<int> sampled = PoissonSampler::seeded(1).sample(0, units.n_units(), 0.5);
  ASSERT_GE(sampled.size(), 3u);
  for (int n : {2, 3}) {
    LocalModel central(m, t, cap, true);
    central.model.set_aux_per_sequence(true);
    central.params.zero_grads();
    const ClippedBatch cb = accumulate_clipped(central.model, units, sampled, plan);
    EXPECT_GT(cb.clipped_fraction, 0);

    InProcessTransport net;
    PcMoeSession s(m, t, n, net, cap, HostPrivacy{true, true, 9});
    const int me = n - 1;
    CollabParty& party = s.party(me);
    party.model.set_aux_per_sequence(true);
    test::open_turn_of(s, net, t.seed, me);  // the hosts zero their gradients
    party.backbone.zero_grads();
    const ClippedBatch pb = accumulate_clipped(party.model, units, sampled, plan);
    EXPECT_NEAR(pb.mean_norm, cb.mean_norm, 1e-5 * cb.mean_norm);
    EXPECT_EQ(pb.clipped_fraction, cb.clipped_fraction);
    double worst = 0;
    for (const ParamTensor& tt : party.backbone.tensors())
      worst = std::max(worst, rel_err(party.backbone.grad(tt.name), central.params.grad(tt.name), tt.numel));
    for (int h = 0; h < n; ++h)
      for (const ParamTensor& tt : s.party(h).host.params().tensors())
        worst = std::max(worst, rel_err(s.party(h).host.params().grad(tt.name), central.params.grad(tt.name), tt.numel));
    EXPECT_LT(worst, 1e-5) << n << " parties";

    // Bytes: per-unit backward requests and responses, and the clip factors, from the format.
    uint64_t want_req = 0, want_resp = 0, want_factors = 0, got_req = 0, got_resp = 0, got_ctl = 0;
    for (const auto& [key, c] : net.stats().by_kind_pair) {
      const auto [kind, from, to] = key;
      if (kind == MsgKind::kExpertBackwardUnits) (from == me ? got_req : got_resp) += c.bytes;
      if (kind == MsgKind::kControl && from == me) got_ctl += c.bytes;
    }
    // The expected counts from each micro-batch's routing: a twin session runs the same
    // micro-batches one call at a time, so each one's routing can be read after it.
    // Per host called: request 4*(3 + k) + rows*(4 + 4C), response rows*4C + 8*units, clip
    // factors 4*3 + 4*units.
    InProcessTransport net2;
    PcMoeSession s2(m, t, n, net2, cap, HostPrivacy{true, true, 9});
    s2.party(me).model.set_aux_per_sequence(true);
    test::open_turn_of(s2, net2, t.seed, me);
    for (size_t i = 0; i < sampled.size();) {
      std::vector<int> mb;
      int windows = 0;
      for (; i < sampled.size(); ++i) {
        const int nw = units.first[sampled[i] + 1] - units.first[sampled[i]];
        if (windows + nw > cap) break;
        windows += nw;
        mb.push_back(sampled[i]);
      }
      accumulate_clipped(s2.party(me).model, units, mb, plan);
      const int U = (int)mb.size();
      for (int l = 0; l < m.n_layers; ++l) {
        const MoeSaved& sv = s2.party(me).model.moe_saved(l);
        for (int h = 0; h < n; ++h) {
          const std::vector<int> ex = hosted_experts(m.n_experts, h, n);
          uint64_t rows = 0;
          for (int e : ex) rows += sv.offsets[e + 1] - sv.offsets[e];
          if (rows == 0 || h == me) continue;
          want_req += 4 * (3 + ex.size()) + rows * 4 + rows * 4 * m.d_model;
          want_resp += rows * 4 * m.d_model + 8 * U;
          want_factors += 12 + 4 * U;
        }
      }
    }
    EXPECT_EQ(got_req, want_req);
    EXPECT_EQ(got_resp, want_resp);
    EXPECT_EQ(got_ctl, want_factors + 12 * (n - 1)) << "the clip factors, and the begin (12 bytes) to each other host";
  }
}

// A whole DP turn: every expert of every host moves, those no sampled token reached included
// (their gradient is pure noise), and the noise is the seeded stream's.
TEST(DpPcMoe, TurnNoisesEveryExpertAndRepeatsWithASeed) {
  const ModelConfig m = tiny::dp_model();
  const TrainConfig t = tiny::dp_train();
  const int32_t bos = 1;
  const PrivacyUnits units = make_privacy_units(tiny::documents(6, 9, bos, 8), m.seq_len, "sequence", bos);
  const DpPlan plan = plan_dp(tiny::dp_config(0.2), units.n_units(), 10);
  const std::vector<int> sampled = {0};  // one sequence: 8 tokens x 2 choices, some experts idle
  std::vector<std::vector<float>> after[2];
  for (int run = 0; run < 2; ++run) {
    InProcessTransport net;
    PcMoeSession s(m, t, 3, net, t.batch_size, HostPrivacy{true, true, 9});
    std::vector<std::vector<float>> before;
    for (int h = 0; h < 3; ++h) {
      const ParamSet& ps = s.party(h).host.params();
      before.emplace_back(ps.values(), ps.values() + ps.numel());
    }
    s.party(0).model.set_aux_per_sequence(true);
    std::map<MsgKind, int> kinds;
    net.set_tap([&](MsgKind kind, int, int, bool is_response, const Bytes& payload) {
      if (is_response) return;
      kinds[kind]++;
      if (kind != MsgKind::kExpertBackwardUnits) return;
      // The unit field of every row: the one sampled sequence is unit 0 of 1.
      Reader r(payload);
      r.u32();
      const uint32_t k = r.u32();
      uint32_t rows = 0;
      for (uint32_t i = 0; i < k; ++i) rows += r.u32();
      EXPECT_EQ(r.u32(), 1u);
      for (uint32_t i = 0; i < rows; ++i) EXPECT_EQ(r.u32(), 0u);
    });
    s.train_dp_turn(test::start_at_turn_of(s, t.seed, 0), units, plan, sampled, 77);
    // What crosses in a DP turn: routed states, per-unit backward calls and control messages only.
    EXPECT_EQ(kinds.count(MsgKind::kExpertBackward), 0u);
    EXPECT_GT(kinds[MsgKind::kExpertBackwardUnits], 0);
    EXPECT_EQ(kinds.size(), 3u);
    bool idle_expert = false;
    for (int l = 0; l < m.n_layers; ++l)
      for (int e = 0; e < m.n_experts; ++e)
        idle_expert |= s.party(0).model.moe_saved(l).offsets[e + 1] == s.party(0).model.moe_saved(l).offsets[e];
    ASSERT_TRUE(idle_expert) << "want an expert that no token reached";
    for (int h = 0; h < 3; ++h) {
      const ParamSet& ps = s.party(h).host.params();
      for (const ParamTensor& tt : ps.tensors()) {
        int moved = 0;
        for (size_t i = 0; i < tt.numel; ++i) moved += ps.value(tt.name)[i] != before[h][tt.offset + i];
        EXPECT_EQ(moved, (int)tt.numel) << tt.name;
      }
      after[run].emplace_back(ps.values(), ps.values() + ps.numel());
    }
  }
  EXPECT_EQ(after[0], after[1]);
}

TEST(DpPcMoe, HostRejectsMalformedPerUnitMessagesWithoutStateChange) {
  const ModelConfig m = tiny::dp_model();
  const TrainConfig t = tiny::dp_train();
  ExpertHost host(m, t, 0, 2, 64, HostPrivacy{true, true, 1});
  ExpertHost plain(m, t, 0, 2, 64);
  const uint64_t turn = next_turn_of(t.seed, 2, 1, 0, 2);  // party 1's calls
  for (ExpertHost* h : {&host, &plain}) {
    h->start_at(turn);
    h->handle(MsgKind::kControl, 1, test::begin_message(turn));
  }
  const std::vector<int> ex = hosted_experts(m.n_experts, 0, 2);
  auto call = [&](bool backward_units, const std::vector<uint32_t>& units, uint32_t n_units) {
    Writer w;
    w.u32(0);
    w.u32((uint32_t)ex.size());
    for (size_t i = 0; i < ex.size(); ++i) w.u32(i == 0 ? (uint32_t)units.size() : 0);
    if (backward_units) {
      w.u32(n_units);
      for (uint32_t u : units) w.u32(u);
    }
    std::vector<float> rows(units.size() * m.d_model, 0.5f);
    w.floats(rows.data(), rows.size());
    return w.take();
  };
  host.handle(MsgKind::kExpertForward, 1, call(false, {0, 0, 1}, 0));
  const std::vector<float> grads(host.params().grads(), host.params().grads() + host.params().numel());
  EXPECT_THROW(host.handle(MsgKind::kExpertBackwardUnits, 1, call(true, {0, 0, 2}, 2)), std::runtime_error);  // index
  EXPECT_THROW(host.handle(MsgKind::kExpertBackwardUnits, 1, call(true, {1, 0, 0}, 2)), std::runtime_error);  // order
  EXPECT_THROW(host.handle(MsgKind::kExpertBackwardUnits, 1, call(true, {0, 0, 1}, 0)), std::runtime_error);  // no units
  Writer f;
  f.u32(4);
  f.u32(0);
  f.u32(2);
  f.f32(0.5f);
  f.f32(0.5f);
  EXPECT_THROW(host.handle(MsgKind::kControl, 1, f.take()), std::runtime_error);  // no pass 1 yet
  EXPECT_EQ(0, std::memcmp(grads.data(), host.params().grads(), grads.size() * sizeof(float)));
  const Bytes ok = host.handle(MsgKind::kExpertBackwardUnits, 1, call(true, {0, 0, 1}, 2));
  EXPECT_EQ(ok.size(), 3 * m.d_model * 4 + 2 * 8u);
  Writer bad;
  bad.u32(4);
  bad.u32(0);
  bad.u32(2);
  bad.f32(0.5f);
  bad.f32(1.5f);  // factors are in [0, 1]
  EXPECT_THROW(host.handle(MsgKind::kControl, 1, bad.take()), std::runtime_error);
  EXPECT_EQ(0, std::memcmp(grads.data(), host.params().grads(), grads.size() * sizeof(float)));
  // A host not planned for DP refuses per-unit calls.
  plain.handle(MsgKind::kExpertForward, 1, call(false, {0, 0, 1}, 0));
  EXPECT_THROW(plain.handle(MsgKind::kExpertBackwardUnits, 1, call(true, {0, 0, 1}, 2)), std::runtime_error);
}
