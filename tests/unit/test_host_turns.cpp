// An expert host serves one turn at a time, its holder's calls only, in the protocol's order,
// and only finite values. Each test drives a host and a twin through the same accepted calls and
// hands the host alone the refused ones: each refusal names the caller, and after it the two are
// the same bit for bit (weights, gradients, AdamW moments and step, turn), and stay so to the
// turn's end, so the refused call changed nothing, the forward kept for a backward included.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include "collab/session.h"
#include "hosts.h"
#include "tiny.h"

using namespace pcmoe;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using test::control;
Bytes update(float coef, float lr) { return control(ControlOp::kApplyUpdate, {coef, lr}); }
Bytes noisy_update(float std, float scale, float lr) {
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kApplyNoisyUpdate));
  w.f32(std);
  w.f32(scale);
  w.f32(lr);
  w.u64(3);  // noise stream
  return w.take();
}
Bytes clip_factors(uint32_t layer, std::vector<float> factors) {
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kClipFactors));
  w.u32(layer);
  w.u32((uint32_t)factors.size());
  w.floats(factors.data(), factors.size());
  return w.take();
}

// Party 1 of 3 hosts experts 1 and 4 of the tiny model; party 0 holds turn `turn`, where the
// hosts start.
class HostTurns : public ::testing::Test, public test::HostTwins {
 protected:
  const ModelConfig m = tiny::model();
  const TrainConfig t = tiny::train();
  const uint64_t turn = (uint64_t)next_turn_of(t.seed, 3, 0, 0, 3);
  const std::vector<int> hosted = hosted_experts(m.n_experts, 1, 3);
  const std::vector<int> offsets = {0, 2, 5, 6, 8, 12, 13};  // rows per expert 2, 3, 1, 2, 4, 1
  const std::vector<int> units = {0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2};  // 3 units, ascending

  void make(const HostPrivacy& privacy = {}, WireDtype wire = WireDtype::kF32) {
    const int max_rows = t.batch_size * m.seq_len * m.top_k;
    host = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, privacy, wire);
    twin = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, privacy, wire);
    host->start_at(turn);
    twin->start_at(turn);
  }

  // An expert call of `layer` whose rows are `scale` x a fixed pattern; units for per-unit ones.
  Bytes expert(MsgKind kind, int layer, float scale, WireDtype wire = WireDtype::kF32) const {
    std::vector<float> x((size_t)offsets.back() * m.d_model);
    for (size_t i = 0; i < x.size(); ++i) x[i] = scale * (0.1f * float(i % 13) - 0.55f);
    const bool per_unit = kind == MsgKind::kExpertBackwardUnits;
    return encode_expert_request(kind, m, layer, hosted, offsets.data(), x.data(), per_unit ? units.data() : nullptr,
                                 per_unit ? 3 : 0, wire);
  }

  // The rest of party 0's plain turn on both, from an open turn with layer 0 forwarded; then
  // the two must still be alike, and the turn over.
  void finish_turn() {
    both(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f));
    both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
    both(MsgKind::kControl, 0, update(0.5f, 0.01f));
    const test::HostState after(*host);
    EXPECT_EQ(test::first_difference(after, test::HostState(*twin)), "");
    EXPECT_EQ(after.turn, turn + 1);
    EXPECT_EQ(after.holder, -1);
    EXPECT_EQ(after.adam_steps, 1);
  }
};

TEST_F(HostTurns, CallsFromAPartyWhoseTurnItIsNotAreRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  const std::string whose = "during turn " + std::to_string(turn) + ", which is party 0's";
  refused(MsgKind::kExpertForward, 2, expert(MsgKind::kExpertForward, 1, 1.0f), whose);
  refused(MsgKind::kExpertBackward, 2, expert(MsgKind::kExpertBackward, 0, 1.0f), whose);
  refused(MsgKind::kControl, 2, control(ControlOp::kGradSqSums), whose);
  refused(MsgKind::kControl, 1, update(0.5f, 0.01f), whose);  // the host's own party too
  refused(MsgKind::kControl, 2, test::begin_message(turn + 1), "while turn " + std::to_string(turn) + " (party 0's) is open");
  refused(MsgKind::kControl, 3, control(ControlOp::kGradSqSums), "the run's parties are 0..2");
  finish_turn();
}

TEST_F(HostTurns, RepeatedBeginIsRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  refused(MsgKind::kControl, 0, test::begin_message(turn), "while turn " + std::to_string(turn) + " (party 0's) is open");
  finish_turn();
  // The finished turn again (a replay): the host is past it.
  refused(MsgKind::kControl, 0, test::begin_message(turn),
          "begin of turn " + std::to_string(turn) + ", but turn " + std::to_string(turn + 1) + " is next");
}

TEST_F(HostTurns, OutOfOrderTurnsAreRefused) {
  make();
  const int next_holder = turn_holder(t.seed, 3, (int64_t)turn + 1);
  refused(MsgKind::kControl, next_holder, test::begin_message(turn + 1),
          "begin of turn " + std::to_string(turn + 1) + ", but turn " + std::to_string(turn) + " is next");
  refused(MsgKind::kControl, 2, test::begin_message(turn), "begin of turn " + std::to_string(turn) + ", which is party 0's");
  refused(MsgKind::kControl, 0, test::begin_message(turn - 1), "is next");
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  finish_turn();
}

TEST_F(HostTurns, TurnFarAheadIsRefused) {
  make();
  refused(MsgKind::kControl, 0, test::begin_message(UINT64_MAX),
          "begin of turn 18446744073709551615, but turn " + std::to_string(turn) + " is next");
  refused(MsgKind::kControl, 0, test::begin_message(turn + 3000), "is next");
  // The host still serves the turn that is due.
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  finish_turn();
}

TEST_F(HostTurns, CallsOutOfTheProtocolsOrderAreRefused) {
  make();
  refused(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f),
          "expert_backward outside a turn (turn " + std::to_string(turn) + " has not begun)");
  refused(MsgKind::kControl, 0, control(ControlOp::kGradSqSums), "outside a turn");
  both(MsgKind::kControl, 0, test::begin_message(turn));
  refused(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f), "no forward awaiting it");
  refused(MsgKind::kControl, 0, update(0.5f, 0.01f), "before its gradient norms were taken");
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  refused(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 2.0f), "before the backward of its last one");
  refused(MsgKind::kControl, 0, control(ControlOp::kGradSqSums), "while layer 0's forward awaits its backward");
  both(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f));
  refused(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f), "no forward awaiting it");
  both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
  refused(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 1, 1.0f), "after the gradient norms");
  both(MsgKind::kControl, 0, update(0.5f, 0.01f));
  EXPECT_EQ(host->turn(), turn + 1);
}

TEST_F(HostTurns, NonFiniteOrOutOfRangeUpdatesAreRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  both(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f));
  both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
  for (const auto& [coef, lr] : {std::pair{0.5f, kInf}, {0.5f, kNaN}, {0.5f, -0.01f}, {kNaN, 0.01f}, {kInf, 0.01f},
                                 {0.0f, 0.01f}})
    refused(MsgKind::kControl, 0, update(coef, lr), "out of range (coefficient in (0, 1], lr finite and >= 0)");
  both(MsgKind::kControl, 0, update(0.5f, 0.01f));
  EXPECT_EQ(test::HostState(*host).adam_steps, 1);
}

TEST_F(HostTurns, NoisyUpdateWithNonFiniteValuesIsRefused) {
  make(HostPrivacy{true, true, 7});
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  both(MsgKind::kExpertBackwardUnits, 0, expert(MsgKind::kExpertBackwardUnits, 0, 1.0f));
  refused(MsgKind::kControl, 0, noisy_update(0.1f, 0.5f, 0.01f), "while layer 0's per-unit backward awaits its clip factors");
  both(MsgKind::kControl, 0, clip_factors(0, {1.0f, 0.5f, 0.25f}));
  for (const auto& [std, scale, lr] : {std::tuple{0.1f, 0.5f, kInf}, {0.1f, 0.5f, kNaN}, {kNaN, 0.5f, 0.01f},
                                       {kInf, 0.5f, 0.01f}, {0.1f, kInf, 0.01f}, {0.1f, 0.0f, 0.01f}})
    refused(MsgKind::kControl, 0, noisy_update(std, scale, lr), "noisy-update order with noise std");
  both(MsgKind::kControl, 0, noisy_update(0.1f, 0.5f, 0.01f));
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
  EXPECT_EQ(host->turn(), turn + 1);
}

TEST_F(HostTurns, NonFiniteClipFactorsAreRefused) {
  make(HostPrivacy{true, true, 7});
  both(MsgKind::kControl, 0, test::begin_message(turn));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  both(MsgKind::kExpertBackwardUnits, 0, expert(MsgKind::kExpertBackwardUnits, 0, 1.0f));
  refused(MsgKind::kControl, 0, clip_factors(0, {1.0f, kNaN, 0.25f}), "clip factor nan outside [0, 1]");
  refused(MsgKind::kControl, 0, clip_factors(0, {kInf, 0.5f, 0.25f}), "clip factor inf outside [0, 1]");
  refused(MsgKind::kControl, 0, clip_factors(0, {1.0f, 0.5f}), "do not follow a per-unit backward of that layer");
  both(MsgKind::kControl, 0, clip_factors(0, {1.0f, 0.5f, 0.25f}));
  refused(MsgKind::kControl, 0, clip_factors(0, {1.0f, 0.5f, 0.25f}), "do not follow a per-unit backward");
  both(MsgKind::kControl, 0, noisy_update(0.1f, 0.5f, 0.01f));
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
}

TEST_F(HostTurns, NonFiniteRowsAreRefused) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(turn));
  for (float bad : {kNaN, kInf}) {
    Bytes fwd = expert(MsgKind::kExpertForward, 0, 1.0f);
    std::memcpy(fwd.data() + fwd.size() - 4, &bad, 4);
    refused(MsgKind::kExpertForward, 0, fwd, "rows must be finite");
  }
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f));
  finish_turn();
}

// fp16 replies can fail after the host computed them: a backward's gradients are restored and its
// forward still stands; a forward whose reply fails leaves no forward for a backward.
TEST_F(HostTurns, AReplyThatOverflowsFp16ChangesNothing) {
  make({}, WireDtype::kF16);
  const auto fp16 = [&](MsgKind kind, float scale) { return expert(kind, 0, scale, WireDtype::kF16); };
  both(MsgKind::kControl, 0, test::begin_message(turn));
  refused(MsgKind::kExpertForward, 0, fp16(MsgKind::kExpertForward, 60000.0f), "beyond its range (65504)");
  refused(MsgKind::kExpertBackward, 0, fp16(MsgKind::kExpertBackward, 1.0f), "no forward awaiting it");
  both(MsgKind::kExpertForward, 0, fp16(MsgKind::kExpertForward, 8000.0f));
  refused(MsgKind::kExpertBackward, 0, fp16(MsgKind::kExpertBackward, 60000.0f), "beyond its range (65504)");
  const test::HostState before(*host);
  both(MsgKind::kExpertBackward, 0, fp16(MsgKind::kExpertBackward, 1.0f));
  EXPECT_NE(test::HostState(*host).grads, before.grads) << "the accepted backward added gradients";
  both(MsgKind::kControl, 0, control(ControlOp::kGradSqSums));
  both(MsgKind::kControl, 0, update(0.5f, 0.01f));
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
}

// With no turn open a forward is an evaluation: served to any party, and nothing is kept (no
// backward may follow it).
TEST_F(HostTurns, EvaluationForwardsBetweenTurnsKeepNothing) {
  make();
  const Bytes y = host->handle(MsgKind::kExpertForward, 2, expert(MsgKind::kExpertForward, 0, 1.0f));
  EXPECT_EQ(y.size(), 7 * m.d_model * sizeof(float));
  EXPECT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "");
  refused(MsgKind::kExpertBackward, 2, expert(MsgKind::kExpertBackward, 0, 1.0f), "outside a turn");
  both(MsgKind::kControl, 0, test::begin_message(turn));
  refused(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, 1.0f), "no forward awaiting it");
  EXPECT_EQ(both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, 1.0f)), y) << "the same experts' outputs";
  finish_turn();
}

// Hands calls on to `inner` and spoils host `bad`'s non-empty answers of kind `kind`.
class SpoilingTransport final : public Transport {
 public:
  SpoilingTransport(Transport& inner, int bad, MsgKind kind, std::function<void(Bytes&)> spoil)
      : inner_(inner), bad_(bad), kind_(kind), spoil_(std::move(spoil)) {}
  void serve(int party, Handler handler) override { inner_.serve(party, std::move(handler)); }
  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override {
    Bytes reply = inner_.call(from, to, kind, request);
    if (to == bad_ && kind == kind_ && !reply.empty()) spoil_(reply);
    return reply;
  }

 private:
  Transport& inner_;
  int bad_;
  MsgKind kind_;
  std::function<void(Bytes&)> spoil_;
};

// A party checks the hosts' answers: a NaN expert output or gradient sum, or a negative sum,
// stops its turn with an error before its backbone or optimizer moves.
TEST(PartyChecks, NonFiniteAnswersOfAHostStopTheTurnBeforeTheBackboneMoves) {
  const ModelConfig m = tiny::model();
  const TrainConfig t = tiny::train();
  std::vector<int32_t> w((size_t)t.batch_size * (m.seq_len + 1));
  for (size_t i = 0; i < w.size(); ++i) w[i] = (int32_t)((i * 7 + 3) % m.vocab_size);
  const auto set_first = [](auto value) {
    return [value](Bytes& b) { std::memcpy(b.data(), &value, sizeof value); };
  };
  const struct {
    MsgKind kind;
    std::function<void(Bytes&)> spoil;
    std::string needle;
  } cases[] = {
      {MsgKind::kExpertForward, set_first(kNaN), "rows must be finite"},
      {MsgKind::kExpertBackward, set_first(-kInf), "rows must be finite"},
      {MsgKind::kControl, set_first(std::numeric_limits<double>::quiet_NaN()), "party 1 answered the gradient sum of"},
      {MsgKind::kControl, set_first(-1.0), "with -1.000000: must be finite and >= 0"},
  };
  for (const auto& c : cases) {
    InProcessTransport inner;
    SpoilingTransport net(inner, 1, c.kind, c.spoil);
    PcMoeSession s(m, t, 2, net);
    const CollabParty& p = s.party(0);
    const auto values = test::HostState::bits(p.backbone.values(), p.backbone.numel());
    const auto moments = test::HostState::bits(p.optimizer.m(), p.backbone.numel());
    try {
      s.train_turn(test::start_at_turn_of(s, t.seed, 0), w.data());
      ADD_FAILURE() << "the turn went on; expected: " << c.needle;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(c.needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(test::HostState::bits(p.backbone.values(), p.backbone.numel()), values) << c.needle;
    EXPECT_EQ(test::HostState::bits(p.optimizer.m(), p.backbone.numel()), moments) << c.needle;
    EXPECT_EQ(p.optimizer.steps_done(), 0);
    EXPECT_EQ(p.turns, 0);
  }
}

}  // namespace
