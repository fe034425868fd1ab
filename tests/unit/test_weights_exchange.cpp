// collab.exchange "weights": the data owner fetches every expert's weights and runs them itself;
// hosts get only gradient sums. Without DP-SGD a turn is the activations exchange's turn, bit
// for bit (the same expert computations on the same rows, only in another process), and one
// party is centralised training; what crosses is only weights, gradient sums and control, in
// exactly the bytes of the format; under DP-SGD the owner clips every unit and noises every
// expert's sum before it leaves.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "collab/collab_config.h"
#include "collab/session.h"
#include "collab/weights_wire.h"
#include "model/local_experts.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/local_model.h"
#include "train/step.h"
#include "train/train_config.h"
#include "hosts.h"
#include "tiny.h"

using namespace pcmoe;

namespace {

ModelConfig model3() {
  ModelConfig m = tiny::model();
  m.n_layers = 3;
  m.moe_every = 1;
  m.tie_embeddings = false;
  return m;
}

TrainConfig train(int grad_accum) {
  TrainConfig t = tiny::train();
  t.batch_size = 3;
  t.grad_accum = grad_accum;
  t.warmup = 2;
  t.grad_clip = 0.5f;  // active
  t.seed = 11;
  return t;
}

bool same_bits(const float* a, const float* b, size_t n) { return n == 0 || std::memcmp(a, b, n * sizeof(float)) == 0; }

// Every backbone and every host of two sessions: weights and AdamW moments the same bit for bit.
void expect_same_state(PcMoeSession& a, PcMoeSession& b) {
  for (int p = 0; p < a.n_parties(); ++p) {
    const ParamSet &ba = a.party(p).backbone, &bb = b.party(p).backbone;
    EXPECT_TRUE(same_bits(ba.values(), bb.values(), ba.numel())) << "backbone of party " << p;
    EXPECT_TRUE(same_bits(a.party(p).optimizer.m(), b.party(p).optimizer.m(), ba.numel())) << "backbone m of " << p;
    EXPECT_TRUE(same_bits(a.party(p).optimizer.v(), b.party(p).optimizer.v(), ba.numel())) << "backbone v of " << p;
    EXPECT_EQ(test::first_difference(test::HostState(a.party(p).host), test::HostState(b.party(p).host)), "")
        << "host " << p;
  }
}

}  // namespace

// Two whole rounds of 3 parties, every turn's loss and gradient norm and then every weight and
// AdamW moment: the same bits in both exchanges, with one micro-batch per turn (gradients
// streamed expert by expert) and with two (gradient sums held for the turn).
TEST(WeightsExchange, EqualsActivationsExchangeBitForBit) {
  set_num_threads(2);
  const ModelConfig m = model3();
  for (int accum : {1, 2}) {
    const TrainConfig t = train(accum);
    InProcessTransport net_a, net_w;
    PcMoeSession act(m, t, 3, net_a);
    PcMoeSession wts(m, t, 3, net_w, 0, {}, WireDtype::kF32, Exchange::kWeights);
    EXPECT_EQ(wts.party(0).weights->holds_turn_grads(), accum > 1);
    for (int64_t turn = 0; turn < 6; ++turn) {
      const auto w = tiny::windows(m, t, 40 + turn);
      const TurnResult a = act.train_turn(turn, w.data());
      const TurnResult b = wts.train_turn(turn, w.data());
      EXPECT_EQ(a.loss.total, b.loss.total) << "turn " << turn << ", grad_accum " << accum;
      EXPECT_EQ(a.loss.ce, b.loss.ce);
      EXPECT_EQ(a.grad_norm, b.grad_norm);
      EXPECT_EQ(a.lr, b.lr);
    }
    expect_same_state(act, wts);
    EXPECT_EQ(net_w.stats().by_kind_pair.count({MsgKind::kExpertForward, 0, 1}), 0u);
  }
}

// One party holds every expert: its weights-exchange turns are centralised training exactly,
// and nothing crosses a boundary.
TEST(WeightsExchange, OnePartyIsCentralisedTraining) {
  set_num_threads(2);
  const ModelConfig m = model3();
  const TrainConfig t = train(2);
  LocalModel c(m, t);
  InProcessTransport net;
  PcMoeSession s(m, t, 1, net, 0, {}, WireDtype::kF32, Exchange::kWeights);
  for (int step = 0; step < 4; ++step) {
    const auto w = tiny::windows(m, t, 100 + step);
    const TurnResult a = s.train_turn(step, w.data());
    const LossStats b = accumulate_gradients(c.model, c.params, w.data(), t.batch_size, t.grad_accum);
    const UpdateStats u = apply_update(c.params, c.opt, t, step);
    ASSERT_EQ(a.loss.total, b.total) << "step " << step;
    ASSERT_EQ(a.grad_norm, u.grad_norm);
  }
  for (const ParamTensor& tt : c.params.tensors()) {
    const ParamSet& where = s.party(0).backbone.has(tt.name) ? s.party(0).backbone : s.party(0).host.params();
    EXPECT_TRUE(same_bits(where.value(tt.name), c.params.value(tt.name), tt.numel)) << tt.name;
  }
  EXPECT_EQ(net.stats().total_bytes(), 0u);
}

// What crosses in party 0's turn of 2 parties: weight fetches (every expert of party 1, routed
// to or not, for the forward and again for the backward), one gradient sum per expert of party
// 1, and control; no hidden state, no output gradient. Each fetched reply is the host's weights;
// each gradient sum is the centralised model's gradient of that expert; the bytes are the
// format's.
TEST(WeightsExchange, OnlyWeightsGradientSumsAndControlCross) {
  set_num_threads(2);
  const ModelConfig m = model3();
  const TrainConfig t = train(1);
  InProcessTransport net;
  PcMoeSession s(m, t, 2, net, 0, {}, WireDtype::kF32, Exchange::kWeights);
  std::vector<test::Crossing> seen;
  test::record_crossings(net, seen);
  const auto w = tiny::windows(m, t, 21);
  const ParamSet& shard = s.party(1).host.params();
  std::vector<float> shard_before(shard.values(), shard.values() + shard.numel());
  s.train_turn(test::start_at_turn_of(s, t.seed, 0), w.data());

  LocalModel c(m, t);  // the same initial weights: its gradients are the sums that must cross
  accumulate_gradients(c.model, c.params, w.data(), t.batch_size, t.grad_accum);

  const size_t fc = (size_t)m.d_ff * m.d_model;
  const std::vector<int> remote = hosted_experts(m.n_experts, 1, 2);  // 1, 3, 5
  std::map<std::pair<int, int>, int> fetches, sums;
  std::set<MsgKind> kinds;
  uint64_t bytes = 0, control = 0;
  const test::Crossing* request = nullptr;
  for (const test::Crossing& x : seen) {
    kinds.insert(x.kind);
    bytes += x.payload.size();
    ASSERT_TRUE(x.kind == MsgKind::kExpertWeights || x.kind == MsgKind::kExpertGrads || x.kind == MsgKind::kControl)
        << to_string(x.kind);
    if (x.kind == MsgKind::kControl) {
      control += x.payload.size();
      continue;
    }
    if (!x.response) {
      request = &x;
      continue;
    }
    Reader rd(request->payload);
    const int layer = (int)rd.u32(), e = (int)rd.u32();
    if (x.kind == MsgKind::kExpertWeights) {
      fetches[{layer, e}]++;
      ASSERT_EQ(x.payload.size(), 3 * fc * 4);
      std::vector<float> got(3 * fc);
      std::memcpy(got.data(), x.payload.data(), x.payload.size());
      for (int i = 0; i < 3; ++i)
        EXPECT_TRUE(same_bits(got.data() + i * fc,
                              shard_before.data() + shard.info(expert_param(layer, e, std::array{"w1", "w3", "w2"}[i])).offset,
                              fc));
    } else {
      sums[{layer, e}]++;
      EXPECT_TRUE(x.payload.empty());
      ASSERT_EQ(request->payload.size(), 8 + 3 * fc * 4);
      std::vector<float> got(3 * fc);
      std::memcpy(got.data(), request->payload.data() + 8, 3 * fc * 4);
      for (int i = 0; i < 3; ++i)
        EXPECT_TRUE(same_bits(got.data() + i * fc, c.params.grad(expert_param(layer, e, std::array{"w1", "w3", "w2"}[i])),
                              fc))
            << "gradient sum of layer " << layer << " expert " << e;
    }
  }
  EXPECT_EQ(kinds, (std::set<MsgKind>{MsgKind::kExpertWeights, MsgKind::kExpertGrads, MsgKind::kControl}));
  for (int l = 0; l < m.n_layers; ++l)
    for (int e : remote) {
      EXPECT_EQ(fetches[std::make_pair(l, e)], 2) << "layer " << l << " expert " << e;
      EXPECT_EQ(sums[std::make_pair(l, e)], 1) << "layer " << l << " expert " << e;
    }
  EXPECT_EQ(fetches.size(), (size_t)m.n_layers * remote.size());
  // Per remote expert: 2 fetches (8 bytes out, 3FC floats back) and a sum (8 + 3FC floats).
  const uint64_t per_expert = 2 * (8 + 3 * fc * 4) + (8 + 3 * fc * 4);
  EXPECT_EQ(bytes - control, (uint64_t)m.n_layers * remote.size() * per_expert);
}

// Bad config: an unknown exchange, fp16 weights, or hidden-state noise with nothing to noise.
TEST(WeightsExchange, ConfigRefusesWhatItCannotMean) {
  const auto err = [](const nlohmann::json& j) {
    try {
      collab_config_from_json(j);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err({{"exchange", "gradients"}}).find("collab.exchange"), std::string::npos);
  EXPECT_NE(err({{"exchange", "weights"}, {"wire_dtype", "fp16"}}).find("fp32 or bf16"), std::string::npos);
  EXPECT_NE(err({{"exchange", "weights"}, {"state_noise", 0.5}}).find("never sends"), std::string::npos);
  EXPECT_EQ(err({{"exchange", "weights"}, {"wire_dtype", "bf16"}}), "");
  EXPECT_FALSE(to_json(collab_config_from_json(nlohmann::json::object())).contains("exchange"))
      << "the default leaves earlier configs' hashes as they were";
}
