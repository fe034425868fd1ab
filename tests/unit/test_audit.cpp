// The leakage audit's instruments: the recording tap keeps exactly what the honest protocol hands
// the observer, and the attack models neither miss an obvious leak nor invent one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "collab/recorder.h"
#include "collab/session.h"
#include "eval/bag_of_words.h"
#include "eval/probe.h"
#include "eval/routing_trace.h"
#include "eval/secrets.h"
#include "model/local_experts.h"
#include "model/lora.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/local_model.h"
#include "train/step.h"
#include "tiny.h"

using namespace pcmoe;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_model() {
  return tiny::model();
}

TrainConfig tiny_train() {
  TrainConfig t = tiny::train();
  t.steps = 3;
  return t;
}

// (Rng streams of nearby seeds overlap: seeds are spread by a large odd factor.)
std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::vector<int32_t> w(n);
  Rng rng(seed * 0x9E3779B97F4A7C15ull);
  for (auto& x : w) x = (int32_t)(rng.next_u64() % vocab);
  return w;
}

// What the observer's handlers are given and what its own calls return, seen from the
// Transport's interface (not its tap): the ground truth the recording must equal.
struct Seen {
  MsgKind kind;
  int from;
  bool is_response;
  int64_t round;
  Bytes payload;
};

class SpyTransport final : public Transport {
 public:
  SpyTransport(Transport& inner, int observer) : inner_(inner), observer_(observer) {}
  void serve(int party, Handler handler) override {
    inner_.serve(party, [this, party, handler](MsgKind kind, int from, const Bytes& request) {
      if (party == observer_ && from != party && recording) seen.push_back({kind, from, false, round, request});
      return handler(kind, from, request);
    });
  }
  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override {
    Bytes response = inner_.call(from, to, kind, request);
    if (from == observer_ && to != from && recording) seen.push_back({kind, to, true, round, response});
    return response;
  }
  bool recording = false;
  int64_t round = 0;
  std::vector<Seen> seen;

 private:
  Transport& inner_;
  int observer_;
};

}  // namespace

TEST(AuditTap, RecordsExactlyWhatTheObserverReceives) {
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  const int n = 3, observer = 1, T = m.seq_len;
  InProcessTransport inner;
  SpyTransport spy(inner, observer);
  PcMoeSession session(m, t, n, spy);
  const fs::path dir = fs::temp_directory_path() / "pcmoe-audit-tap";
  fs::remove_all(dir);
  std::map<std::pair<int64_t, int>, std::vector<int32_t>> batches;  // (round, party) -> windows
  {
    Recorder rec(dir.string(), observer, n, "fingerprint",
                 [&](MsgKind, int from, const Bytes& payload) {
                   return expert_call_truth(session.party(from).model, payload, observer, n);
                 });
    inner.set_tap(rec.tap());
    for (int64_t round = 0; round < 3; ++round) {
      const bool record = round != 1;  // rounds 0 and 2 recorded, 1 not
      rec.set_round(round, record);
      spy.recording = record;
      spy.round = round;
      for (int64_t turn = round * n; turn < (round + 1) * n; ++turn) {
        const int p = session.holder(turn);
        auto& w = batches[{round, p}];
        w = random_tokens((size_t)t.batch_size * (T + 1), m.vocab_size, 100 * round + p);
        session.train_turn(turn, w.data());
      }
    }
  }
  const Recording got = read_recording(dir.string());
  EXPECT_EQ(got.observer, observer);
  EXPECT_EQ(got.fingerprint, "fingerprint");
  ASSERT_EQ(got.records.size(), spy.seen.size());
  ASSERT_GT(got.records.size(), 0u);
  int truths = 0, forward_from_others = 0;
  for (size_t i = 0; i < got.records.size(); ++i) {
    const Record& r = got.records[i];
    const Seen& s = spy.seen[i];
    EXPECT_EQ(r.kind, s.kind) << i;
    EXPECT_EQ(r.from, s.from) << i;
    EXPECT_EQ(r.is_response, s.is_response) << i;
    EXPECT_EQ(r.round, s.round) << i;
    EXPECT_TRUE(r.payload == s.payload) << "record " << i << " differs from what the observer received";
    EXPECT_NE(r.round, 1);
    if (!r.truth.empty()) {
      ++truths;
      // Each row's tokens are the sender's batch at that row (inputs and next-token targets).
      const std::vector<int32_t>& w = batches.at({r.round, r.from});
      for (size_t j = 0; j < r.truth.size(); j += 3) {
        const int row = r.truth[j + 2], b = row / T, pos = row % T;
        EXPECT_EQ(r.truth[j], w[(size_t)b * (T + 1) + pos]);
        EXPECT_EQ(r.truth[j + 1], w[(size_t)b * (T + 1) + pos + 1]);
      }
    }
    forward_from_others += !r.is_response && r.kind == MsgKind::kExpertForward;
  }
  EXPECT_GT(forward_from_others, 0);
  EXPECT_GT(truths, 0);
  fs::remove_all(dir);
}

TEST(AuditTap, TruncatedRecordingIsAnError) {
  const fs::path dir = fs::temp_directory_path() / "pcmoe-audit-trunc";
  fs::remove_all(dir);
  {
    Recorder rec(dir.string(), 0, 2, "abc");
    rec.set_round(0, true);
    rec.tap()(MsgKind::kExpertForward, 1, 0, false, Bytes(100, std::byte{7}));
  }
  EXPECT_EQ(read_recording(dir.string()).records.size(), 1u);
  fs::resize_file(dir / "recording.bin", fs::file_size(dir / "recording.bin") - 10);
  EXPECT_THROW(read_recording(dir.string()), std::runtime_error);
  fs::remove_all(dir);
  EXPECT_THROW(read_recording(dir.string()), std::runtime_error);
}

TEST(AuditProbe, TopKCountsTiesByTheirShare) {
  // 3 classes; row 0: label 2 strictly best; row 1: label tied with one other at the top.
  const float scores[] = {0.f, 1.f, 5.f, 2.f, 2.f, 0.f};
  const int32_t labels[] = {2, 0};
  const eval::TopK r = eval::topk_hits(scores, labels, 2, 3);
  EXPECT_DOUBLE_EQ(r.top1, (1.0 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(r.top10, 1.0);
  const eval::TopK c = eval::chance_level({1, 1, 1, 2}, 3);
  EXPECT_DOUBLE_EQ(c.top1, 0.75);
  EXPECT_DOUBLE_EQ(c.top10, 1.0);
}

// Random vectors carry no label: a probe trained on them learns at best the label prior, so on
// fresh ones it scores at the chance level, never above it.
TEST(AuditProbe, RandomStatesScoreAtChance) {
  const int C = 32, V = 64, n = 8192, m = 4096;
  Rng rng(3);
  std::vector<float> x((size_t)n * C), xt((size_t)m * C);
  for (float& v : x) v = (float)rng.normal();
  for (float& v : xt) v = (float)rng.normal();
  // Skewed labels (as tokens are), drawn independently of the vectors.
  auto label = [&] { return (int32_t)std::min<uint64_t>(V - 1, (rng.next_u64() % V) * (rng.next_u64() % V) / V); };
  std::vector<int32_t> y(n), yt(m);
  for (auto& v : y) v = label();
  for (auto& v : yt) v = label();
  for (int hidden : {0, 64}) {
    eval::Probe probe(C, V, {hidden, 6, 256, 1e-2f, 1});
    probe.train(x.data(), y.data(), n);
    std::vector<float> logits((size_t)m * V);
    probe.logits(xt.data(), m, logits.data());
    const eval::TopK hit = eval::topk_hits(logits.data(), yt.data(), m, V);
    const eval::TopK chance = eval::chance_level(yt, V);
    // no more than 4 standard errors above chance (sqrt(p(1-p)/m) <= 0.008), and not far below
    EXPECT_LT(hit.top1, chance.top1 + 0.032) << "hidden " << hidden;
    EXPECT_LT(hit.top10, chance.top10 + 0.032) << "hidden " << hidden;
    EXPECT_GT(hit.top1, chance.top1 - 0.05) << "hidden " << hidden;
    EXPECT_GT(hit.top10, chance.top10 - 0.1) << "hidden " << hidden;
  }
}

namespace {

// Keeps the grouped rows of layer 0's forward, as the hosts receive them.
struct LayerZeroCapture final : ExpertBackend {
  LayerZeroCapture(const ModelConfig& cfg, ParamSet& p, int max_rows) : inner(cfg, p, max_rows), E(cfg.n_experts), C(cfg.d_model) {}
  void forward(int layer, const int* off, const float* x, float* y) override {
    if (layer == 0) rows.assign(x, x + (size_t)off[E] * C);
    inner.forward(layer, off, x, y);
  }
  void backward(int layer, const int* off, const float* dy, float* dx) override { inner.backward(layer, off, dy, dx); }
  void backward_unit_norms(int, const int*, const float*, const int*, int, float*, double*) override {}
  void add_clipped_grads(int, const float*) override {}
  LocalExperts inner;
  int E, C;
  std::vector<float> rows;
};

// The layer-0 state of every token of windows[B, T+1] (its first expert's row), appended to x,
// and its input token to y.
void layer_zero_states(Model& model, const LayerZeroCapture& capture, const std::vector<int32_t>& windows, int B,
                       std::vector<float>& x, std::vector<int32_t>& y) {
  const ModelConfig& m = model.config();
  model.forward(windows.data(), B, 1.f);
  const MoeSaved& sv = model.moe_saved(0);
  for (int t = 0; t < B * m.seq_len; ++t) {
    const float* row = capture.rows.data() + (size_t)sv.row[t * m.top_k] * m.d_model;
    x.insert(x.end(), row, row + m.d_model);
    y.push_back(model.last_inputs()[t]);
  }
}

}  // namespace

// The leakiest setting: the attacker holds the victim's exact weights and inverts layer-0 states
// (what an expert host receives at the first MoE layer) into tokens.
TEST(AuditProbe, ExactWeightsInvertLayerZeroStates) {
  const ModelConfig m = tiny_model();
  const int B = 8, T = m.seq_len, C = m.d_model, K = m.top_k;
  ParamSet params(m, ParamSelection{});
  params.init(9);
  LayerZeroCapture capture(m, params, B * T * K);
  Model model(m, params, capture, B);
  auto states = [&](uint64_t seed, int batches, std::vector<float>& x, std::vector<int32_t>& y) {
    for (int i = 0; i < batches; ++i)
      layer_zero_states(model, capture, random_tokens((size_t)B * (T + 1), m.vocab_size, seed + i), B, x, y);
  };
  std::vector<float> x, xt;
  std::vector<int32_t> y, yt;
  states(1000, 48, x, y);
  states(5000, 8, xt, yt);
  EXPECT_LT(eval::chance_level(yt, m.vocab_size).top1, 0.05);
  for (int hidden : {0, 128}) {
    eval::Probe probe(C, m.vocab_size, {hidden, 8, 128, 1e-2f, 1});
    probe.train(x.data(), y.data(), (int)y.size());
    std::vector<float> logits(yt.size() * m.vocab_size);
    probe.logits(xt.data(), (int)yt.size(), logits.data());
    const eval::TopK hit = eval::topk_hits(logits.data(), yt.data(), (int)yt.size(), m.vocab_size);
    std::printf("exact weights, layer 0, hidden %d: top-1 %.4f top-10 %.4f\n", hidden, hit.top1, hit.top10);
    EXPECT_GT(hit.top1, 0.9) << "hidden " << hidden;
    EXPECT_GT(hit.top10, 0.99) << "hidden " << hidden;
  }
}

// A secret of three tokens, planted once in every window of a victim's batch: with the victim's
// exact weights (round 0: the shared start) the state attack rebuilds it whole; from random states
// it rebuilds none of it, and neither does the public bigram guess, which never saw it.
TEST(AuditSecrets, StateAttackRebuildsAPlantedSecretFromExactWeightsAndNothingFromRandomStates) {
  const ModelConfig m = tiny_model();
  const int B = 8, T = m.seq_len, C = m.d_model, K = m.top_k, V = m.vocab_size;
  ParamSet params(m, ParamSelection{});
  params.init(9);
  LayerZeroCapture capture(m, params, B * T * K);
  Model model(m, params, capture, B);
  std::vector<std::string> text(V);  // token i reads " w<i>"
  for (int i = 0; i < V; ++i) text[i] = " w" + std::to_string(i);
  const std::vector<int32_t> secret = {17, 42, 9};
  std::vector<int32_t> batch = random_tokens((size_t)B * (T + 1), V, 77);
  for (int b = 0; b < B; ++b) std::copy(secret.begin(), secret.end(), batch.begin() + (size_t)b * (T + 1) + 3 + b);
  std::vector<float> x, xv;
  std::vector<int32_t> y, yv, pub;
  for (int i = 0; i < 48; ++i) {
    const std::vector<int32_t> w = random_tokens((size_t)B * (T + 1), V, 1000 + i);
    pub.insert(pub.end(), w.begin(), w.end());
    layer_zero_states(model, capture, w, B, x, y);
  }
  layer_zero_states(model, capture, batch, B, xv, yv);
  eval::Probe probe(C, V, {0, 8, 128, 1e-2f, 1});
  probe.train(x.data(), y.data(), (int)y.size());
  // The victim's rows: all of them (a host that hosts every expert), at their (window, slot).
  auto audit = [&](const std::vector<float>& states) {
    std::vector<float> logits(yv.size() * V);
    probe.logits(states.data(), (int)yv.size(), logits.data());
    const std::vector<int32_t> guess = eval::top1(logits, V);
    eval::Reconstruction r;
    for (int n = 0; n < B * T; ++n) r.add({1, n / T, n % T}, guess[n], 1.0);
    eval::SecretsAudit sa({{"w17 w42 w9", false}, {"w63 w63 w63 w63", false}}, text, pub, T);
    sa.set_batch(0, 1, batch);
    sa.score("states", "linear-probe", r, {});
    sa.score_public_guess();
    return sa.report();
  };
  const nlohmann::json exact = audit(xv);
  ASSERT_EQ(exact["found"], 1);
  const nlohmann::json& probe_row = exact["summary"][0];
  const nlohmann::json& bigram_row = exact["summary"][1];
  EXPECT_EQ(probe_row["occurrences"], B);
  EXPECT_EQ(probe_row["tokens"], 3 * B);
  EXPECT_GE(probe_row["exact"].get<int>(), B - 1) << probe_row.dump();
  EXPECT_EQ(bigram_row["attack"], "public bigram");
  EXPECT_EQ(bigram_row["exact"], 0) << bigram_row.dump();
  std::vector<float> noise(xv.size());
  Rng rng(11);
  for (float& v : noise) v = (float)rng.normal();
  const nlohmann::json random = audit(noise);
  const nlohmann::json& random_row = random["summary"][0];
  EXPECT_EQ(random_row["exact"], 0) << random_row.dump();
  EXPECT_LE(random_row["tokens_recovered"].get<int>(), 2) << random_row.dump();
}

// The federated server's rule: fitted on one fresh-optimizer step of the model on a batch it
// knows, it finds another batch's tokens in that step's embedding rows (the leaky case: the
// party also starts from fresh AdamW state); on an update of random rows it scores at chance.
TEST(AuditBagOfWords, FindsTheTokensOfAFreshStepAndNothingInNoise) {
  ModelConfig m = tiny_model();
  m.vocab_size = 256;
  m.tie_embeddings = true;
  TrainConfig t = tiny_train();
  const int V = m.vocab_size, C = m.d_model, T = m.seq_len;
  auto step_delta = [&](const std::vector<int32_t>& w) {
    LocalModel local(m, t);
    std::vector<float> before(local.params.value("wte"), local.params.value("wte") + (size_t)V * C);
    accumulate_gradients(local.model, local.params, w.data(), t.batch_size, 1);
    apply_update(local.params, local.opt, t, 5);
    std::vector<float> delta(before.size());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] = local.params.value("wte")[i] - before[i];
    return std::make_pair(delta, before);
  };
  // Each batch draws from its own half-overlapping quarter of the vocabulary, so sets differ.
  auto batch = [&](int lo, uint64_t seed) {
    std::vector<int32_t> w = random_tokens((size_t)t.batch_size * (T + 1), V / 2, seed);
    for (auto& x : w) x = lo + x % (V / 4);
    return w;
  };
  const auto pub = batch(0, 1), victim = batch(V / 8, 2);
  const auto [dp, g] = step_delta(pub);
  const auto [dv, g2] = step_delta(victim);
  ASSERT_EQ(g, g2);
  eval::TokenRule attack;
  attack.fit(eval::embedding_row_features(dp.data(), g.data(), V, C), eval::tokens_present(pub.data(), pub.size(), V));
  const std::vector<uint8_t> actual = eval::tokens_present(victim.data(), victim.size(), V);
  const eval::TokenSetScore s = eval::score_token_set(attack.predict(eval::embedding_row_features(dv.data(), g.data(), V, C)), actual);
  EXPECT_GT(s.precision, 0.95);
  EXPECT_GT(s.recall, 0.9);
  std::vector<float> noise(dv.size());
  Rng rng(4);
  for (float& x : noise) x = (float)rng.normal() * 1e-3f;
  const eval::TokenSetScore r = eval::score_token_set(attack.predict(eval::embedding_row_features(noise.data(), g.data(), V, C)), actual);
  const double chance = (double)r.actual / V;
  EXPECT_LT(r.precision, chance + 0.15);
  const eval::TokenSetScore exact = eval::score_token_set({1, 1, 0, 0}, {1, 0, 1, 0});
  EXPECT_DOUBLE_EQ(exact.precision, 0.5);
  EXPECT_DOUBLE_EQ(exact.recall, 0.5);
}

// The server's LoRA rule: a step changes an adapter's A by s·(dy B)ᵀ x, so its rows lie in the
// span of the step's token inputs x. Fitted on one step over a known batch, it finds the tokens
// of a fresh step with other tokens (the leaky case: few distinct tokens, wide inputs), and on
// random changes of A it scores at chance.
TEST(AuditBagOfWords, LoraFindsTheTokensOfAFreshStepAndNothingInNoise) {
  const int V = 256, C = 128, r = 8, N = 32, distinct = 8;
  Rng rng(11);
  std::vector<float> inputs((size_t)V * C);
  for (float& x : inputs) x = (float)rng.normal();
  // Three adapters (as on wq, wk, wv), each with its own A and a B already trained away from zero.
  std::vector<std::vector<float>> A(3, std::vector<float>((size_t)r * C)), B(3, std::vector<float>((size_t)C * r));
  for (int k = 0; k < 3; ++k) {
    for (float& x : A[k]) x = (float)rng.normal() / std::sqrt((float)C);
    for (float& x : B[k]) x = (float)rng.normal() * 0.1f;
  }
  auto step = [&](int lo, std::vector<std::vector<float>>& dA) {
    std::vector<int32_t> tokens(N);
    for (int n = 0; n < N; ++n) tokens[n] = lo + (int32_t)(rng.next_u64() % distinct);
    std::vector<float> x((size_t)N * C), dy((size_t)N * C), t((size_t)N * r);
    for (int n = 0; n < N; ++n) std::copy_n(inputs.begin() + (size_t)tokens[n] * C, C, x.begin() + (size_t)n * C);
    dA.assign(3, std::vector<float>((size_t)r * C, 0.f));
    for (int k = 0; k < 3; ++k) {
      for (float& g : dy) g = (float)rng.normal();
      std::vector<float> dB((size_t)C * r, 0.f);
      const LoraMap m{A[k].data(), B[k].data(), dA[k].data(), dB.data(), C, C, r, 2.f, t.data()};
      lora_backward_weights(dy.data(), x.data(), m, N);
    }
    return eval::tokens_present(tokens.data(), tokens.size(), V);
  };
  auto features = [&](const std::vector<std::vector<float>>& dA) {
    return eval::lora_input_features({dA[0].data(), dA[1].data(), dA[2].data()}, r, inputs.data(), V, C);
  };
  std::vector<std::vector<float>> dp, dv;
  const std::vector<uint8_t> pub = step(0, dp), actual = step(100, dv);
  eval::TokenRule rule;
  rule.fit(features(dp), pub);
  const eval::TokenSetScore s = eval::score_token_set(rule.predict(features(dv)), actual);
  EXPECT_GT(s.precision, 0.95);
  EXPECT_GT(s.recall, 0.95);
  // Random changes of A: precision within 4 standard errors of chance, over many draws.
  double hits = 0, predicted = 0;
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<std::vector<float>> noise(3, std::vector<float>((size_t)r * C));
    for (auto& a : noise)
      for (float& x : a) x = (float)rng.normal();
    const eval::TokenSetScore n = eval::score_token_set(rule.predict(features(noise)), actual);
    hits += n.precision * n.predicted;
    predicted += n.predicted;
  }
  const double chance = (double)s.actual / V, precision = hits / predicted;
  EXPECT_NEAR(precision, chance, 4 * std::sqrt(chance * (1 - chance) / predicted));
}

// The routing-trace attack. Leaky: each token's state drifts a little from layer to layer and
// its experts at the three layers name it exactly (27 tokens, 27 tuples of 3 codes); linking
// and decoding then recover nearly everything (the linking with a quarter of the tokens missing
// at each layer, the decoding of a trace the host saw whole). Random: states drawn afresh at
// every layer link nothing, and codes drawn at random decode at chance.
TEST(AuditRoutingTrace, LinksAndDecodesALeakyTraceAndNothingInRandomOnes) {
  const int V = 27, L = 3, C = 32, N = 200, most = N * 3 / 4;
  Rng rng(21);
  auto trace = [&](bool drift, bool token_codes, int missing_layer, int seen) {
    std::vector<int32_t> token(N);
    for (auto& t : token) t = (int32_t)(rng.next_u64() % V);
    std::vector<float> state((size_t)N * C);
    for (float& x : state) x = (float)rng.normal();
    eval::Trace t(L);
    for (int l = 0; l < L; ++l) {
      for (float& x : state) x = drift ? x + 0.1f * (float)rng.normal() : (float)rng.normal();
      if (l == missing_layer) continue;
      // The host receives `seen` of the tokens, in batch order (one expert's group, no index).
      std::vector<int> order(N);
      for (int n = 0; n < N; ++n) order[n] = n;
      for (int n = N - 1; n > 0; --n) std::swap(order[n], order[rng.next_u64() % (n + 1)]);
      std::sort(order.begin(), order.begin() + seen);
      for (int k = 0; k < seen; ++k) {
        const int n = order[k];
        t[l].state.insert(t[l].state.end(), state.begin() + (size_t)n * C, state.begin() + (size_t)(n + 1) * C);
        const int digit = token_codes ? token[n] / (l == 0 ? 1 : l == 1 ? 3 : 9) % 3 : (int)(rng.next_u64() % 3);
        t[l].code.push_back(1 + digit);
        t[l].place.push_back((k + 0.5f) / seen);
        t[l].token.push_back(token[n]);
        t[l].position.push_back(n);
      }
    }
    return t;
  };
  std::vector<eval::Trace> pub;
  for (int i = 0; i < 20; ++i) pub.push_back(trace(true, true, -1, most));
  eval::RouteTable::Linking link{std::vector<float>(L, 1.f), std::vector<float>(L, 2.f)};
  for (int m = 1; m < L; ++m) {
    link.bands[m] = eval::fit_place_band(pub, m);
    EXPECT_LT(link.bands[m], 0.25) << m;  // a token keeps its place in the batch order
    eval::LinkCandidates all;
    for (const auto& t : pub) {
      const eval::LinkCandidates c = eval::nearest_previous(t[m - 1], t[m], C, link.bands[m]);
      all.best.insert(all.best.end(), c.best.begin(), c.best.end());
      all.truth.insert(all.truth.end(), c.truth.begin(), c.truth.end());
      all.cosine.insert(all.cosine.end(), c.cosine.begin(), c.cosine.end());
    }
    link.thresholds[m] = eval::fit_link_threshold(all);
  }
  eval::RouteTable table(L, V);
  for (const auto& t : pub) table.add(t, link, C);

  const eval::Trace leaky = trace(true, true, -1, most), whole = trace(true, true, -1, N),
                    fresh = trace(false, true, -1, most), noise = trace(true, false, -1, most);
  for (int m = 1; m < L; ++m) {
    const eval::LinkScore s = eval::score_links(eval::nearest_previous(leaky[m - 1], leaky[m], C, link.bands[m]), link.thresholds[m]);
    EXPECT_GT(s.accuracy, 0.97) << m;
    EXPECT_NEAR(s.baseline, 0.25, 0.1) << m;  // a quarter of the rows have no partner
    const eval::LinkScore r = eval::score_links(eval::nearest_previous(fresh[m - 1], fresh[m], C, link.bands[m]), link.thresholds[m]);
    EXPECT_EQ(r.precision, 0.0) << m;
    EXPECT_DOUBLE_EQ(r.accuracy, r.baseline) << m;
  }
  for (int m = 0; m < L; ++m) {
    const eval::TopK hit = eval::topk_hits(table.scores(whole, link, C, m).data(), whole[m].token.data(), whole[m].n(), V);
    EXPECT_GT(hit.top1, 0.97) << m;
    const eval::TopK r = eval::topk_hits(table.scores(noise, link, C, m).data(), noise[m].token.data(), noise[m].n(), V);
    const double chance = 1.0 / V;
    EXPECT_LT(r.top1, chance + 4 * std::sqrt(chance * (1 - chance) / r.n)) << m;
  }
  // A table fitted where the host saw every token at every layer, asked about a trace with
  // layer 2 missing: no chain of the table ends early, so each backs off to layers 0 and 1 (3
  // tokens share each pair of codes); without the back-off no key would match and all would tie.
  eval::RouteTable seen_whole(L, V);
  for (int i = 0; i < 20; ++i) seen_whole.add(trace(true, true, -1, N), link, C);
  const eval::Trace gap = trace(true, true, 2, N);
  const eval::TopK g =
      eval::topk_hits(seen_whole.scores(gap, link, C, 0).data(), gap[0].token.data(), gap[0].n(), V);
  EXPECT_GT(g.top10, 0.97);
  EXPECT_NEAR(g.top1, 1.0 / 3, 0.15);
}
