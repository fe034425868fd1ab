// A host of concurrent rounds (collab.schedule "concurrent") serves every party's turn of the open
// round at once, each in its own slot: a party begins only its own turn of the open round, once;
// a backward must match that party's own forward; nothing is served to a party whose turn has not
// begun or has sent its update; every update of a round carries one lr; the round's last update
// steps the experts once, on the mean of the contributions each scaled by its party's clip
// coefficient. Each refusal names the caller and leaves the host (weights, AdamW, every party's
// contribution, the round) the same bit for bit as a twin that never saw it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>

#include "collab/session.h"
#include "collab/weights_wire.h"
#include "hosts.h"
#include "tiny.h"

using namespace pcmoe;

namespace {

using test::control;
Bytes update(float coef, float lr) { return control(ControlOp::kApplyUpdate, {coef, lr}); }

// Party 1 of 3 hosts experts 1 and 4 of the tiny model, in concurrent rounds from round 0.
class ConcurrentHost : public ::testing::Test, public test::HostTwins {
 protected:
  const ModelConfig m = tiny::model();
  const TrainConfig t = tiny::train();
  const std::vector<int> hosted = hosted_experts(m.n_experts, 1, 3);
  const std::vector<int> rows_a = {0, 2, 5, 6, 8, 12, 13};  // rows per expert 2, 3, 1, 2, 4, 1
  const std::vector<int> rows_b = {0, 1, 1, 4, 4, 6, 9};    // 1, 0, 3, 0, 2, 3

  void make(Exchange exchange = Exchange::kActivations) {
    const int max_rows = t.batch_size * m.seq_len * m.top_k;
    host = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, HostPrivacy{}, WireDtype::kF32, exchange,
                                        Schedule::kConcurrent);
    twin = std::make_unique<ExpertHost>(m, t, 1, 3, max_rows, HostPrivacy{}, WireDtype::kF32, exchange,
                                        Schedule::kConcurrent);
  }
  Bytes expert(MsgKind kind, int layer, const std::vector<int>& offsets, float scale) const {
    std::vector<float> x((size_t)offsets.back() * m.d_model);
    for (size_t i = 0; i < x.size(); ++i) x[i] = scale * (0.1f * float(i % 13) - 0.55f);
    return encode_expert_request(kind, m, layer, hosted, offsets.data(), x.data());
  }
  // Party p's whole turn of round `round` (rows_a, or rows_b for party 2), its update (coef, lr).
  void turn_of(int p, uint64_t round, float coef, float lr) {
    const std::vector<int>& rows = p == 2 ? rows_b : rows_a;
    both(MsgKind::kControl, p, test::begin_message(round * 3 + p));
    for (int layer = 0; layer < m.n_layers; ++layer) {
      both(MsgKind::kExpertForward, p, expert(MsgKind::kExpertForward, layer, rows, 1.0f + p));
      both(MsgKind::kExpertBackward, p, expert(MsgKind::kExpertBackward, layer, rows, 0.5f));
    }
    both(MsgKind::kControl, p, control(ControlOp::kGradSqSums));
    both(MsgKind::kControl, p, update(coef, lr));
  }
};

TEST_F(ConcurrentHost, APartyBeginsOnlyItsOwnTurnOfTheOpenRoundAndOnlyOnce) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(0));
  both(MsgKind::kControl, 2, test::begin_message(2));
  refused(MsgKind::kControl, 0, test::begin_message(0),
          "a second begin of party 0's turn of round 0 (one contribution per party and round)");
  refused(MsgKind::kControl, 0, test::begin_message(1), "begin of turn 1, which is party 1's");
  refused(MsgKind::kControl, 1, test::begin_message(4), "begin of turn 4 (round 1), but round 0 is open");
  refused(MsgKind::kControl, 1, test::begin_message(UINT64_MAX), "but round 0 is open");
  refused(MsgKind::kControl, 3, test::begin_message(3), "the run's parties are 0..2");
  refused(MsgKind::kControl, -1, test::begin_message(0), "the run's parties are 0..2");
  refused(MsgKind::kExpertBackward, 1, expert(MsgKind::kExpertBackward, 0, rows_a, 1.0f),
          "outside a turn (party 1's turn of round 0 has not begun)");
  refused(MsgKind::kControl, 1, control(ControlOp::kGradSqSums), "party 1's turn of round 0 has not begun");
  refused(MsgKind::kControl, 1, update(0.5f, 0.01f), "party 1's turn of round 0 has not begun");
  EXPECT_EQ(host->turn(), 0u);
  EXPECT_EQ(host->optimizer().steps_done(), 0);
}

// Parties 0 and 2 interleave their calls; each backward must match its own party's forward.
TEST_F(ConcurrentHost, EachPartysForwardStateIsKeptApart) {
  make();
  both(MsgKind::kControl, 0, test::begin_message(0));
  both(MsgKind::kControl, 2, test::begin_message(2));
  both(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, rows_a, 1.0f));
  both(MsgKind::kExpertForward, 2, expert(MsgKind::kExpertForward, 0, rows_b, 2.0f));
  refused(MsgKind::kExpertBackward, 2, expert(MsgKind::kExpertBackward, 0, rows_a, 1.0f),
          "does not match the rows of the last forward of layer 0");
  refused(MsgKind::kExpertForward, 0, expert(MsgKind::kExpertForward, 0, rows_a, 1.0f),
          "a forward of layer 0 before the backward of its last one");
  refused(MsgKind::kControl, 2, control(ControlOp::kGradSqSums), "while layer 0's forward awaits its backward");
  both(MsgKind::kExpertBackward, 2, expert(MsgKind::kExpertBackward, 0, rows_b, 1.0f));
  const test::HostState mid(*host);
  EXPECT_NE(mid.slots[1], std::vector<uint32_t>(mid.slots[1].size(), 0u)) << "party 2's backward filled its slot";
  EXPECT_EQ(mid.grads, std::vector<uint32_t>(mid.grads.size(), 0u)) << "and not party 0's";
  both(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, rows_a, 1.0f));
  both(MsgKind::kControl, 2, control(ControlOp::kGradSqSums));
  refused(MsgKind::kExpertForward, 2, expert(MsgKind::kExpertForward, 1, rows_b, 1.0f), "after the gradient norms");
}

// One contribution per party and round: after its update a party is served nothing more of the
// round; an update whose lr differs from an earlier one of the round is refused; the round's last
// update steps the experts once and opens the next round, where the past round is refused.
TEST_F(ConcurrentHost, OneContributionPerPartyAndRoundThenOneStep) {
  make();
  turn_of(0, 0, 0.5f, 0.01f);
  refused(MsgKind::kControl, 0, test::begin_message(0), "a second begin of party 0's turn of round 0");
  refused(MsgKind::kExpertBackward, 0, expert(MsgKind::kExpertBackward, 0, rows_a, 1.0f),
          "after party 0's update of round 0 (its turn of the round is over)");
  refused(MsgKind::kControl, 0, control(ControlOp::kGradSqSums), "after party 0's update of round 0");
  refused(MsgKind::kControl, 0, update(0.5f, 0.01f), "after party 0's update of round 0");
  both(MsgKind::kControl, 2, test::begin_message(2));
  both(MsgKind::kExpertForward, 2, expert(MsgKind::kExpertForward, 1, rows_b, 3.0f));
  both(MsgKind::kExpertBackward, 2, expert(MsgKind::kExpertBackward, 1, rows_b, 0.5f));
  both(MsgKind::kControl, 2, control(ControlOp::kGradSqSums));
  refused(MsgKind::kControl, 2, update(1.0f, 0.02f), "where party 0's update of round 0 has lr 0.010000");
  both(MsgKind::kControl, 2, update(1.0f, 0.01f));
  EXPECT_EQ(host->optimizer().steps_done(), 0) << "party 1's contribution is still to come";
  // The contributions as they stand before the round's end: the step must take their mean.
  const test::HostState before(*host);
  std::vector<float> g0(before.grads.size()), g2(before.grads.size());
  std::memcpy(g0.data(), before.grads.data(), g0.size() * 4);
  std::memcpy(g2.data(), before.slots[1].data(), g2.size() * 4);
  turn_of(1, 0, 0.25f, 0.01f);
  std::vector<float> g1(before.grads.size());
  {
    const test::HostState mid(*host);
    EXPECT_EQ(mid.adam_steps, 1) << "the round's last update stepped the experts, once";
    EXPECT_EQ(mid.turn, 3u) << "round 1 is open";
  }
  // Party 1's own contribution: recompute it on a fresh host from the same start.
  ExpertHost alone(m, t, 1, 3, t.batch_size * m.seq_len * m.top_k, HostPrivacy{}, WireDtype::kF32,
                   Exchange::kActivations, Schedule::kConcurrent);
  alone.handle(MsgKind::kControl, 1, test::begin_message(1));
  for (int layer = 0; layer < m.n_layers; ++layer) {
    alone.handle(MsgKind::kExpertForward, 1, expert(MsgKind::kExpertForward, layer, rows_a, 2.0f));
    alone.handle(MsgKind::kExpertBackward, 1, expert(MsgKind::kExpertBackward, layer, rows_a, 0.5f));
  }
  std::memcpy(g1.data(), alone.contribution(1).grads(), g1.size() * 4);
  const float* combined = host->params().grads();
  double worst = 0, largest = 0;
  for (size_t i = 0; i < g0.size(); ++i) {
    const double want = (0.5 * g0[i] + 0.25 * g1[i] + 1.0 * g2[i]) / 3;
    largest = std::max(largest, std::fabs(want));
    worst = std::max(worst, std::fabs(want - combined[i]));
  }
  EXPECT_GT(largest, 1e-3);
  EXPECT_LT(worst, 1e-6 * largest) << "the step's gradient is the parties' clipped mean";
  refused(MsgKind::kControl, 0, test::begin_message(0), "begin of turn 0 (round 0), but round 1 is open");
  both(MsgKind::kControl, 0, test::begin_message(3));
}

// The weights exchange: each party's sums go to its own slot, once per expert and turn.
TEST_F(ConcurrentHost, WeightsExchangeSumsArePerPartyAndOnce) {
  make(Exchange::kWeights);
  std::vector<float> g(expert_floats(m));
  for (size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * float(i % 17) - 0.08f;
  const size_t fc = g.size() / 3;
  const auto sum = [&](int layer, int e) {
    const ExpertRef ref{layer, e};
    return encode_expert_floats(g.data(), g.data() + fc, g.data() + 2 * fc, m, WireDtype::kF32, &ref);
  };
  both(MsgKind::kControl, 0, test::begin_message(0));
  both(MsgKind::kControl, 2, test::begin_message(2));
  both(MsgKind::kExpertGrads, 0, sum(0, 1));
  both(MsgKind::kExpertGrads, 2, sum(0, 1));
  refused(MsgKind::kExpertGrads, 2, sum(0, 1), "a second gradient sum of layer 0 expert 1");
  refused(MsgKind::kExpertGrads, 1, sum(0, 1), "party 1's turn of round 0 has not begun");
  refused(MsgKind::kControl, 0, control(ControlOp::kGradSqSums), "before the gradient sum of layer 0 expert 4 arrived");
  const Bytes fetch = encode_weights_request(0, 4);
  EXPECT_EQ(both(MsgKind::kExpertWeights, 1, fetch), both(MsgKind::kExpertWeights, 0, fetch))
      << "an evaluation's fetch and a turn's read the same weights";
}

}  // namespace
