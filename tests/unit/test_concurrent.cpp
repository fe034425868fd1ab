// collab.schedule "concurrent": every party runs its turn of a round at once against the experts
// of the round's start; each host keeps every caller's turn apart and steps once per round on
// their combination, summed in party order. So one concurrent party is a sequential one bit for
// bit, the order in which the parties' calls arrive changes no bit of a round, and a round is
// what a centralised computation of each party's clipped gradient gives (docs/protocol.md).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <set>
#include <thread>

#include "collab/collab_config.h"
#include "collab/party_threads.h"
#include "collab/session.h"
#include "interleave.h"
#include "model/local_experts.h"
#include "tensor/gemm.h"
#include "tiny_dp.h"
#include "train/adamw.h"
#include "train/step.h"
#include "train/train_config.h"

using namespace pcmoe;

namespace {

constexpr int kRounds = 3;

// A DP-SGD set-up for the sessions below: every party's units and plan, seeded noise.
struct DpSetup {
  ModelConfig m = tiny::dp_model();
  TrainConfig t = tiny::dp_train();
  std::vector<PrivacyUnits> units;
  std::vector<DpPlan> plans;
  explicit DpSetup(int n) {
    for (int p = 0; p < n; ++p) {
      units.push_back(make_privacy_units(tiny::documents(8, 9, 1, 40 + p), m.seq_len, "sequence", 1));
      plans.push_back(plan_dp(tiny::dp_config(0.4), units.back().n_units(), 10));
    }
  }
};

// What a run covers: the exchange and, when dp is given, DP-SGD turns.
struct Variant {
  Exchange exchange;
  const DpSetup* dp;
};

// A session of n parties for `v` on `net`, under `schedule`.
std::unique_ptr<PcMoeSession> session(const Variant& v, int n, Transport& net, Schedule schedule) {
  const ModelConfig m = v.dp ? v.dp->m : tiny::model();
  const TrainConfig t = v.dp ? v.dp->t : tiny::train();
  int max_batch = 0;
  if (v.dp) {
    max_batch = t.batch_size;
    for (const PrivacyUnits& u : v.dp->units) max_batch = std::max(max_batch, u.max_windows());
  }
  auto s = std::make_unique<PcMoeSession>(m, t, n, net, max_batch, v.dp ? HostPrivacy{true, true, 9} : HostPrivacy{},
                                          WireDtype::kF32, v.exchange, schedule);
  for (int p = 0; v.dp && p < n; ++p) s->party(p).model.set_aux_per_sequence(true);
  return s;
}

// Party p's turn `turn` of round `round` in `s`: its batch is drawn from (p, round) alone.
std::vector<uint64_t> train(PcMoeSession& s, const Variant& v, int p, int64_t turn, int64_t round) {
  if (v.dp) {
    const PoissonSampler sampler = PoissonSampler::seeded(100 + (uint64_t)p);
    const std::vector<int> sampled = sampler.sample(round, v.dp->units[p].n_units(), v.dp->plans[p].q);
    return test::result_bits(
        s.train_dp_turn(turn, v.dp->units[p], v.dp->plans[p], sampled, (uint64_t)(p * 1000 + round)).turn);
  }
  const std::vector<int32_t> w = tiny::windows(tiny::model(), tiny::train(), 17 + 31 * (uint64_t)p + 1009 * (uint64_t)round);
  return test::result_bits(s.train_turn(turn, w.data()));
}

// Every party's turns of kRounds concurrent rounds, one after another in `order` each round; or,
// with `order` empty, at once on threads of their own, their calls delivered as they come
// (shuffled 0) or in the seeded order of `shuffled`. The turns' bits by (round, party), and the
// session's bits at the end.
struct Rounds {
  std::vector<std::vector<uint64_t>> turns;
  std::unique_ptr<test::SessionBits> end;
  std::vector<int> delivered;
};
Rounds run_rounds(const Variant& v, int n, const std::vector<int>& order, uint64_t shuffled = 0) {
  InProcessTransport plain;
  test::ShuffledTransport mixed(shuffled);
  Transport& net = shuffled ? static_cast<Transport&>(mixed) : plain;
  std::unique_ptr<PcMoeSession> s = session(v, n, net, Schedule::kConcurrent);
  Rounds r;
  r.turns.resize((size_t)kRounds * n);
  PartyThreads threads(n, 1);
  for (int64_t round = 0; round < kRounds; ++round) {
    if (order.empty() && !shuffled) {
      threads.run([&](int p) { r.turns[round * n + p] = train(*s, v, p, round * n + p, round); });
    } else if (shuffled) {
      mixed.start(n);
      threads.run([&](int p) {
        try {
          r.turns[round * n + p] = train(*s, v, p, round * n + p, round);
        } catch (...) {
          mixed.done();
          throw;
        }
        mixed.done();
      });
    } else {
      // On a thread of one compute thread, as the party threads (numbers depend on the count).
      std::thread([&] {
        set_num_threads(1);
        for (int p : order) r.turns[round * n + p] = train(*s, v, p, round * n + p, round);
      }).join();
    }
  }
  r.end = std::make_unique<test::SessionBits>(*s);
  r.delivered = mixed.delivered;
  return r;
}

void expect_same(const Rounds& a, const Rounds& b, const std::string& what) {
  EXPECT_EQ(a.turns, b.turns) << what << ": every turn's loss, cross-entropy, lr and gradient norm";
  EXPECT_EQ(a.end->difference(*b.end), "") << what;
}

// How often the delivered calls switch from one party to another.
int switches(const std::vector<int>& delivered) {
  int k = 0;
  for (size_t i = 1; i < delivered.size(); ++i) k += delivered[i] != delivered[i - 1];
  return k;
}

}  // namespace

TEST(ConcurrentRounds, OnePartyIsTheSequentialScheduleBitForBit) {
  const DpSetup dp(1);
  for (const Variant& v : {Variant{Exchange::kActivations, nullptr}, Variant{Exchange::kWeights, nullptr},
                           Variant{Exchange::kActivations, &dp}, Variant{Exchange::kWeights, &dp}}) {
    InProcessTransport a, b;
    std::unique_ptr<PcMoeSession> seq = session(v, 1, a, Schedule::kSequential);
    std::unique_ptr<PcMoeSession> con = session(v, 1, b, Schedule::kConcurrent);
    for (int64_t turn = 0; turn < 4; ++turn)
      EXPECT_EQ(train(*seq, v, 0, turn, turn), train(*con, v, 0, turn, turn)) << "turn " << turn;
    const test::SessionBits x(*seq), y(*con);
    EXPECT_EQ(x.difference(y), "") << (v.dp ? "DP-SGD, " : "") << (v.exchange == Exchange::kWeights ? "weights" : "activations");
    EXPECT_EQ(con->party(0).host.turn(), 4u);
    EXPECT_EQ(con->party(0).host.optimizer().steps_done(), 4);
  }
}

// The same three rounds with the parties' turns one after another in two orders, at once on
// threads (the hosts serving their calls as they come), and at once with their calls interleaved
// in four seeded orders: the same bits everywhere.
TEST(ConcurrentRounds, TheOrderInWhichCallsArriveChangesNoBit) {
  const int n = 3;
  const DpSetup dp(n);
  for (const Variant& v : {Variant{Exchange::kActivations, nullptr}, Variant{Exchange::kWeights, nullptr},
                           Variant{Exchange::kActivations, &dp}}) {
    const std::string what = std::string(v.dp ? "DP-SGD, " : "") + (v.exchange == Exchange::kWeights ? "weights" : "activations");
    const Rounds forward = run_rounds(v, n, {0, 1, 2});
    expect_same(forward, run_rounds(v, n, {2, 1, 0}), what + ", parties in reverse order");
    expect_same(forward, run_rounds(v, n, {}), what + ", at once on threads, calls as they come");
    std::set<std::vector<int>> orders;
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      const Rounds mixed = run_rounds(v, n, {}, seed);
      expect_same(forward, mixed, what + ", calls shuffled with seed " + std::to_string(seed));
      EXPECT_GT(switches(mixed.delivered), 10 * kRounds) << "the parties' calls interleave";
      orders.insert(mixed.delivered);
    }
    EXPECT_EQ(orders.size(), 4u) << "each seed delivers the calls in another order";
    // The experts step once per round, not once per turn.
    EXPECT_EQ(forward.end->hosts[0].adam_steps, kRounds);
  }
}

// Two parties' concurrent round against a centralised computation from the round's starting
// weights: each party's loss and gradient norm are those of its batch on the whole model (its
// backbone and every expert as they stood), and each host steps once, AdamW's first step, on the
// mean of the parties' expert gradients, each clipped by its own party's coefficient.
TEST(ConcurrentRounds, ARoundStepsOnTheMeanOfEachPartysClippedGradient) {
  const ModelConfig m = tiny::model();
  TrainConfig t = tiny::train();
  t.grad_clip = 0.6f;  // below the parties' norms here: clipping is active
  const int n = 2;
  InProcessTransport net;
  PcMoeSession s(m, t, n, net, 0, {}, WireDtype::kF32, Exchange::kActivations, Schedule::kConcurrent);
  std::vector<std::vector<float>> start(n);  // every host's weights at the round's start
  for (int h = 0; h < n; ++h) start[h].assign(s.party(h).host.params().values(), s.party(h).host.params().values() +
                                                                                      s.party(h).host.params().numel());
  std::vector<std::unique_ptr<ParamSet>> whole;
  std::vector<LossStats> loss(n);
  std::vector<double> norm(n);
  std::vector<float> coef(n);
  std::vector<std::vector<int32_t>> windows;
  for (int p = 0; p < n; ++p) {
    windows.push_back(tiny::windows(m, t, 500 + (uint64_t)p));
    whole.push_back(std::make_unique<ParamSet>(m, ParamSelection{}));
    ParamSet& w = *whole.back();
    w.copy_values_from(s.party(p).backbone);
    for (int h = 0; h < n; ++h) w.copy_values_from(s.party(h).host.params());
    LocalExperts experts(m, w, t.batch_size * m.seq_len * m.top_k);
    Model model(m, w, experts, t.batch_size);
    loss[p] = accumulate_gradients(model, w, windows[p].data(), t.batch_size, t.grad_accum);
    norm[p] = grad_norm(w);
    coef[p] = clip_coefficient(norm[p], t.grad_clip);
    ASSERT_LT(coef[p], 0.99f) << "party " << p << "'s norm " << norm[p] << " is clipped";
  }
  for (int p : {1, 0}) {  // party 1's turn first: it must not see party 0's update either way
    const TurnResult r = s.train_turn(p, windows[p].data());
    EXPECT_NEAR(r.loss.total, loss[p].total, 1e-5 * loss[p].total) << "party " << p;
    EXPECT_NEAR(r.grad_norm, norm[p], 1e-5 * norm[p]) << "party " << p;
  }
  const float lr = learning_rate(t, 0);
  for (int h = 0; h < n; ++h) {
    const ParamSet& shard = s.party(h).host.params();
    EXPECT_EQ(s.party(h).host.optimizer().steps_done(), 1);
    double worst_g = 0, worst_w = 0, largest = 0;
    for (const ParamTensor& tt : shard.tensors())
      for (size_t i = 0; i < tt.numel; ++i) {
        double g = 0;
        for (int p = 0; p < n; ++p) g += (double)coef[p] / n * whole[p]->grad(tt.name)[i];
        largest = std::max(largest, std::fabs(g));
        worst_g = std::max(worst_g, std::fabs(g - shard.grad(tt.name)[i]));
        // AdamW's first step from zero moments: w (1 - lr wd) - lr g / (|g| + eps).
        const double w0 = start[h][tt.offset + i];
        const double want = w0 * (tt.decay ? 1.0 - (double)lr * t.weight_decay : 1.0) - lr * g / (std::fabs(g) + t.eps);
        worst_w = std::max(worst_w, std::fabs(want - shard.value(tt.name)[i]));
      }
    EXPECT_GT(largest, 1e-4) << "host " << h << " got gradients";
    EXPECT_LT(worst_g, 1e-5 * largest) << "host " << h << ": the combined gradient";
    EXPECT_LT(worst_w, 2e-6) << "host " << h << ": one AdamW step at lr " << lr;
  }
}

TEST(ConcurrentRounds, ConfigKeysAreCheckedAndTheirDefaultsLeaveConfigsAsTheyWere) {
  const auto err = [](const nlohmann::json& j) {
    try {
      collab_config_from_json(j);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(err({{"schedule", "parallel"}}).find("'collab.schedule' must be \"sequential\" or \"concurrent\""),
            std::string::npos);
  EXPECT_NE(err({{"expert_lr_scale", 0}}).find("'collab.expert_lr_scale' must be in (0, 1000]"), std::string::npos);
  EXPECT_NE(err({{"expert_lr_scale", -1}}).find("expert_lr_scale"), std::string::npos);
  EXPECT_EQ(err({{"schedule", "concurrent"}, {"expert_lr_scale", 1.7}}), "");
  const nlohmann::json defaults = to_json(collab_config_from_json(nlohmann::json::object()));
  EXPECT_FALSE(defaults.contains("schedule") || defaults.contains("expert_lr_scale"))
      << "the defaults leave earlier configs' hashes (and their checkpoints) as they were";
  EXPECT_EQ(parse_schedule("concurrent"), Schedule::kConcurrent);
  EXPECT_EQ(turn_holder(5, 3, 7, Schedule::kConcurrent), 1) << "turn 7 of 3 parties: round 2, party 1";
  EXPECT_EQ(next_turn_of(5, 3, 2, 3, 9, Schedule::kConcurrent), 5);
}
