// DP-SGD in the weights exchange: the data owner clips every unit's gradient itself (the hosts
// see no per-unit call and no clip factor), its clipped sums are the centralised model's, and
// every expert's sum leaves with the Gaussian noise already on it: exactly the seeded stream's
// draws, after the backbone's, on every expert, routed to or not. The hosts add none.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "collab/session.h"
#include "collab/weights_wire.h"
#include "privacy/dp_sgd.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/local_model.h"
#include "hosts.h"
#include "tiny_dp.h"

using namespace pcmoe;

namespace {

DpPlan seeded_plan(int n_units, double sigma) {
  DpPlan p = plan_dp(tiny::dp_config(), n_units, 10);
  p.sigma = sigma;  // 0: the clipped sums alone
  return p;
}

struct Crossed {
  std::set<MsgKind> kinds;
  std::vector<uint32_t> control_ops;                   // first u32 of each control request
  std::vector<Bytes> control_requests;
  std::map<std::pair<int, int>, std::vector<float>> sums;  // (layer, expert) -> the sum sent
};

// Party `me` of 3 takes one DP-SGD turn in the weights exchange with noise multiplier `sigma`;
// what crossed.
Crossed dp_turn(const ModelConfig& m, const TrainConfig& t, const PrivacyUnits& units, const std::vector<int>& sampled,
                double sigma, int me, uint64_t noise_stream) {
  const int cap = std::max(t.batch_size, units.max_windows());
  InProcessTransport net;
  PcMoeSession s(m, t, 3, net, cap, HostPrivacy{true, true, 9}, WireDtype::kF32, Exchange::kWeights);
  s.party(me).model.set_aux_per_sequence(true);
  Crossed c;
  net.set_tap([&](MsgKind k, int, int, bool response, const Bytes& b) {
    c.kinds.insert(k);
    if (response) return;
    Reader rd(b);
    if (k == MsgKind::kControl) {
      c.control_ops.push_back(rd.u32());
      c.control_requests.push_back(b);
    }
    if (k != MsgKind::kExpertGrads) return;
    const int layer = (int)rd.u32(), e = (int)rd.u32();
    std::vector<float> g(expert_floats(m));
    rd.floats(g.data(), g.size());
    rd.expect_end();
    c.sums[{layer, e}] = std::move(g);
  });
  s.train_dp_turn(test::start_at_turn_of(s, t.seed, me), units, seeded_plan(units.n_units(), sigma), sampled,
                  noise_stream);
  return c;
}

}  // namespace

TEST(WeightsExchangeDp, OwnerClipsEveryUnitAndNoisesEverySumBeforeItLeaves) {
  set_num_threads(2);
  const ModelConfig m = tiny::dp_model();
  const TrainConfig t = tiny::dp_train();
  const int32_t bos = 1;
  const PrivacyUnits units = make_privacy_units(tiny::documents(12, 20, bos, 5), m.seq_len, "document", bos);
  const std::vector<int> sampled = PoissonSampler::seeded(1).sample(0, units.n_units(), 0.5);
  ASSERT_GE(sampled.size(), 3u);
  const int me = 2;
  const uint64_t noise_stream = 77;
  const Crossed clean = dp_turn(m, t, units, sampled, 0.0, me, noise_stream);
  const Crossed noisy = dp_turn(m, t, units, sampled, 1.0, me, noise_stream);

  // The hosts see weight fetches, gradient sums and control: no per-unit call, no clip factor,
  // and an update that adds no noise (std 0).
  for (const Crossed* c : {&clean, &noisy}) {
    EXPECT_EQ(c->kinds, (std::set<MsgKind>{MsgKind::kExpertWeights, MsgKind::kExpertGrads, MsgKind::kControl}));
    for (size_t i = 0; i < c->control_ops.size(); ++i) {
      const uint32_t op = c->control_ops[i];
      EXPECT_TRUE(op == (uint32_t)ControlOp::kBeginTurn || op == (uint32_t)ControlOp::kApplyNoisyUpdate) << op;
      if (op != (uint32_t)ControlOp::kApplyNoisyUpdate) continue;
      Reader rd(c->control_requests[i]);
      rd.u32();
      EXPECT_EQ(rd.f32(), 0.0f) << "a host told to add noise";
    }
  }

  // The clipped sums the owner sends are the centralised model's clipped sums.
  const int cap = std::max(t.batch_size, units.max_windows());
  LocalModel central(m, t, cap, true);
  central.model.set_aux_per_sequence(true);
  central.params.zero_grads();
  const ClippedBatch cb = accumulate_clipped(central.model, units, sampled, seeded_plan(units.n_units(), 1.0));
  EXPECT_GT(cb.clipped_fraction, 0);
  const size_t fc = (size_t)m.d_ff * m.d_model;
  size_t remote = 0;
  for (int l = 0; l < m.n_layers; ++l)
    for (int e = 0; e < m.n_experts; ++e) {
      if (host_of(e, 3) == me) continue;
      ++remote;
      const std::vector<float>& got = clean.sums.at({l, e});
      double worst = 0, scale = 0;
      for (int i = 0; i < 3; ++i) {
        const float* want = central.params.grad(expert_param(l, e, std::array{"w1", "w3", "w2"}[i]));
        for (size_t j = 0; j < fc; ++j) {
          worst = std::max(worst, (double)std::fabs(got[i * fc + j] - want[j]));
          scale = std::max(scale, (double)std::fabs(want[j]));
        }
      }
      EXPECT_LE(worst, 1e-5 * std::max(scale, 1e-3)) << "layer " << l << " expert " << e;
    }
  EXPECT_EQ(clean.sums.size(), remote);

  // The noise: the seeded stream of (test_seed, stream * 1024 + 1023), the backbone's draws
  // first, then every expert of every MoE layer in order (the owner's own experts draw too, but
  // their sums do not cross); each coordinate is (float)(clean + σC·z), rounded once.
  NoiseSource src = NoiseSource::seeded(9, noise_stream * 1024 + 1023);
  ParamSet backbone(m, backbone_selection());
  for (const ParamTensor& tt : backbone.tensors())
    for (size_t i = 0; i < tt.numel; ++i) src.normal();
  const double std = 1.0 * 0.05;
  size_t checked = 0, moved = 0;
  for (int l = 0; l < m.n_layers; ++l)
    for (int e = 0; e < m.n_experts; ++e) {
      std::vector<double> z(3 * fc);
      for (double& v : z) v = src.normal();
      if (host_of(e, 3) == me) continue;
      const std::vector<float>& c0 = clean.sums.at({l, e});
      const std::vector<float>& c1 = noisy.sums.at({l, e});
      for (size_t j = 0; j < 3 * fc; ++j) {
        ASSERT_EQ(c1[j], (float)((double)c0[j] + std * z[j])) << "layer " << l << " expert " << e << " coordinate " << j;
        moved += c1[j] != c0[j];
      }
      ++checked;
    }
  EXPECT_EQ(checked, remote);
  EXPECT_GT(moved, checked * 3 * fc * 99 / 100) << "noise on (nearly) every coordinate of every sum";
}
