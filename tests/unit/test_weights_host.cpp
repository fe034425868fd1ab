// An expert host of the weights exchange: it hands out its experts' weights and keeps one
// gradient sum per hosted expert and turn, from the turn's holder only, for an MoE layer and an
// expert it holds, finite, once; the norms and the update wait for every sum; it takes no hidden
// state (and an activations host hands out no weight). Each refusal names the caller and leaves
// the host the same bit for bit as a twin that never saw it (weights, gradients, AdamW, turn).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>

#include "collab/session.h"
#include "collab/weights_wire.h"
#include "hosts.h"
#include "tiny.h"

using namespace pcmoe;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using test::control;
Bytes noisy_update(float std) {
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kApplyNoisyUpdate));
  w.f32(std);
  w.f32(0.5f);
  w.f32(0.01f);
  w.u64(3);
  return w.take();
}

// Party 1 of 3 hosts experts 1 and 4; layer 1 is MoE, layer 0 dense; party 0 holds `turn`.
class WeightsHost : public ::testing::Test, public test::HostTwins {
 protected:
  ModelConfig m = [] {
    ModelConfig c = tiny::model();
    c.moe_every = 2;
    return c;
  }();
  const TrainConfig t = tiny::train();
  const uint64_t turn = (uint64_t)next_turn_of(t.seed, 3, 0, 0, 3);

  void make(Exchange exchange = Exchange::kWeights, const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32) {
    const int max_rows = t.batch_size * m.seq_len * m.top_k;
    host = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, privacy, wire, exchange);
    twin = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, privacy, wire, exchange);
    host->start_at(turn);
    twin->start_at(turn);
  }
  // A gradient sum of (layer, expert): `scale` x a fixed pattern.
  Bytes sum(int layer, int expert, float scale, WireDtype wire = WireDtype::kF32) const {
    std::vector<float> g(expert_floats(m));
    for (size_t i = 0; i < g.size(); ++i) g[i] = scale * (0.01f * float(i % 17) - 0.08f);
    const size_t fc = g.size() / 3;
    const ExpertRef ref{layer, expert};
    return encode_expert_floats(g.data(), g.data() + fc, g.data() + 2 * fc, m, wire, &ref);
  }
  void finish_turn() {
    both(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f));
    both(MsgKind::kExpertGrads, 0, sum(1, 4, 2.0f));
    both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
    both(MsgKind::kControl, 0, control(ControlOp::kApplyUpdate, {0.5f, 0.01f}));
    EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
    EXPECT_EQ(host->turn(), turn + 1);
    EXPECT_EQ(test::HostState(*host).adam_steps, 1);
  }
};

}  // namespace

TEST_F(WeightsHost, ServesTheHoldersFetchesAndKeepsItsSumsAsSent) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  const Bytes w = both(MsgKind::kExpertWeights, 0, encode_weights_request(1, 4));
  ASSERT_EQ(w.size(), expert_floats(m) * 4);
  const size_t fc = expert_floats(m) / 3;
  EXPECT_EQ(std::memcmp(w.data(), host->params().value(expert_param(1, 4, "w1")), fc * 4), 0);
  EXPECT_EQ(std::memcmp(w.data() + 2 * fc * 4, host->params().value(expert_param(1, 4, "w2")), fc * 4), 0);
  const Bytes s = sum(1, 4, 2.0f);
  both(MsgKind::kExpertGrads, 0, s);
  EXPECT_EQ(std::memcmp(s.data() + 8 + fc * 4, host->params().grad(expert_param(1, 4, "w3")), fc * 4), 0);
  both(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f));
  both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
  both(MsgKind::kControl, 0, control(ControlOp::kApplyUpdate, {0.5f, 0.01f}));
  EXPECT_EQ(host->turn(), turn + 1);
}

TEST_F(WeightsHost, APartyWhoseTurnItIsNotIsRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  const std::string whose = "during turn " + std::to_string(turn) + ", which is party 0's";
  refused(MsgKind::kExpertWeights, 2, encode_weights_request(1, 1), whose);
  refused(MsgKind::kExpertWeights, 1, encode_weights_request(1, 1), whose);  // the host's own party too
  refused(MsgKind::kExpertGrads, 2, sum(1, 1, 1.0f), whose);
  refused(MsgKind::kExpertGrads, 3, sum(1, 1, 1.0f), "the run's parties are 0..2");
  finish_turn();
  refused(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f), "a gradient sum outside a turn");
}

TEST_F(WeightsHost, ALayerOrExpertItDoesNotHoldIsRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(0, 1), "layer 0 is not an MoE layer");
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(2, 1), "layer 2 is not an MoE layer");
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(-1, 1), "is not an MoE layer");
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(1, 2), "expert 2 of layer 1 is not hosted here");
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(1, 40), "expert 40 of layer 1 is not hosted here");
  Bytes longer = encode_weights_request(1, 1);
  longer.push_back(std::byte{0});
  refused(MsgKind::kExpertWeights, 0, longer, "a weights request is 8 bytes");
  refused(MsgKind::kExpertGrads, 0, sum(0, 1, 1.0f), "layer 0 is not an MoE layer");
  refused(MsgKind::kExpertGrads, 0, sum(1, 3, 1.0f), "expert 3 of layer 1 is not hosted here");
  Bytes short_sum = sum(1, 1, 1.0f);
  short_sum.resize(short_sum.size() - 4);
  refused(MsgKind::kExpertGrads, 0, short_sum, "the message has");
  refused(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f, WireDtype::kBF16), "the message has");  // another dtype's length
  Bytes bad = sum(1, 1, 1.0f);
  std::memcpy(bad.data() + bad.size() - 4, &kNaN, 4);
  refused(MsgKind::kExpertGrads, 0, bad, "rows must be finite");
  finish_turn();
}

TEST_F(WeightsHost, EverySumOnceAndAllBeforeTheNormsOrTheUpdate) {
  make(Exchange::kWeights, HostPrivacy{true, true, 7});
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f));
  refused(MsgKind::kExpertGrads, 0, sum(1, 1, 3.0f), "a second gradient sum of layer 1 expert 1");
  refused(MsgKind::kControl, 0, control(ControlOp::kGradSqSums), "before the gradient sum of layer 1 expert 4 arrived");
  refused(MsgKind::kControl, 0, noisy_update(0.0f), "before the gradient sum of layer 1 expert 4 arrived");
  both(MsgKind::kExpertGrads, 0, sum(1, 4, 2.0f));
  refused(MsgKind::kControl, 0, noisy_update(0.1f), "the owner noises every gradient sum before it leaves");
  both(MsgKind::kControl, 0, noisy_update(0.0f));
  EXPECT_EQ(host->turn(), turn + 1);
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
}

TEST_F(WeightsHost, HiddenStatesAreRefusedAndActivationsHostsHandOutNoWeights) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  std::vector<float> x(2 * m.d_model, 0.5f);
  const std::vector<int> offsets = {0, 0, 1, 1, 1, 2, 2};  // one row to expert 1, one to expert 4
  const Bytes fwd = encode_expert_request(MsgKind::kExpertForward, m, 1, {1, 4}, offsets.data(), x.data());
  refused(MsgKind::kExpertForward, 0, fwd, "take no hidden state or output gradient");
  refused(MsgKind::kExpertBackward, 0, fwd, "take no hidden state or output gradient");
  finish_turn();

  make(Exchange::kActivations);
  refused(MsgKind::kExpertWeights, 0, encode_weights_request(1, 1), "hand out no weights");
  both(MsgKind::kControl, 0, test::begin_message(turn));
  refused(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f), "take no gradient sums");
}

// With no turn open a fetch is an evaluation's: served to any party, changing nothing; bf16
// weights are the host's rounded to nearest even.
TEST_F(WeightsHost, EvaluationFetchesBetweenTurnsChangeNothing) {
  make(Exchange::kWeights, {}, WireDtype::kBF16);
  const Bytes w = host->handle(MsgKind::kExpertWeights, 2, encode_weights_request(1, 1));
  ASSERT_EQ(w.size(), expert_floats(m) * 2);
  const float* w1 = host->params().value(expert_param(1, 1, "w1"));
  for (int i = 0; i < 16; ++i) {
    uint16_t h;
    std::memcpy(&h, w.data() + 2 * i, 2);
    EXPECT_EQ(h, float_to_bf16(w1[i]));
  }
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertGrads, 0, sum(1, 1, 1.0f, WireDtype::kBF16));
  both(MsgKind::kExpertGrads, 0, sum(1, 4, 1.0f, WireDtype::kBF16));
  both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
  both(MsgKind::kControl, 0, control(ControlOp::kApplyUpdate, {0.5f, 0.01f}));
  EXPECT_EQ(host->turn(), turn + 1);
}
