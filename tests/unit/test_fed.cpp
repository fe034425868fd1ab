// Federated baselines: FedAvg against centralised training, the server's weighted mean, the
// bytes on the wire, the codecs, and the CG-FedLLM autoencoder (gradients, TGAP).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "fed/fedavg.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/step.h"

using namespace pcmoe;
using namespace pcmoe::fed;

namespace {

ModelConfig tiny_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.d_model = 32;
  m.n_layers = 2;
  m.n_heads = 4;
  m.n_kv_heads = 2;
  m.d_ff = 24;
  m.d_ff_dense = 40;
  m.n_experts = 4;
  m.top_k = 2;
  m.seq_len = 16;
  m.tie_embeddings = false;
  return m;
}

TrainConfig tiny_train() {
  TrainConfig t;
  t.batch_size = 3;
  t.grad_accum = 2;
  t.steps = 10;
  t.warmup = 2;
  t.grad_clip = 0.5f;
  t.seed = 11;
  t.threads = 1;
  return t;
}

FedConfig tiny_fed() {
  FedConfig f;
  f.block_size = 64;
  f.latent_ratio = 8;
  f.ae_batch = 16;
  f.faf_steps = 2;
  return f;
}

// Windows of party p's local step s: a pure function of (p, s).
void random_windows(const ModelConfig& m, const TrainConfig& t, int p, int64_t s, int32_t* w) {
  Rng rng(splitmix64(1000 * (uint64_t)p + (uint64_t)s + 1));
  for (size_t i = 0; i < (size_t)t.grad_accum * t.batch_size * (m.seq_len + 1); ++i)
    w[i] = (int32_t)(rng.next_u64() % m.vocab_size);
}

std::vector<float> initial_state(const ModelConfig& m, const TrainConfig& t) {
  ParamSet p(m, ParamSelection{});
  p.init(t.seed);
  std::vector<float> g(trainable_numel(p));
  gather(p, g.data());
  return g;
}

std::unique_ptr<FedSession> session(const std::string& mode, const std::vector<int>& local_steps, Transport& net,
                                    const FedConfig& fc = tiny_fed()) {
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  std::unique_ptr<BlockAutoencoder> ae;
  if (mode == "cg-fedllm") ae = std::make_unique<BlockAutoencoder>(fc.block_size, fc.latent(), 3);
  return std::make_unique<FedSession>(
      m, t, fc, mode, local_steps, net, [m, t](int p, int64_t s, int32_t* w) { random_windows(m, t, p, s, w); },
      initial_state(m, t), std::move(ae));
}

// Elements of the full model, from the shapes alone.
size_t model_floats(const ModelConfig& m) {
  size_t n = 0;
  for (const ParamTensor& t : param_layout(m, ParamSelection{})) {
    size_t k = 1;
    for (int64_t d : t.shape) k *= (size_t)d;
    n += k;
  }
  return n;
}

}  // namespace

TEST(Fed, OnePartyOneLocalStepIsOneCentralisedStep) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  LocalModel central(m, t);
  std::vector<int32_t> w((size_t)t.grad_accum * t.batch_size * (m.seq_len + 1));
  random_windows(m, t, 0, 0, w.data());
  const LossStats cl = accumulate_gradients(central.model, central.params, w.data(), t.batch_size, t.grad_accum);
  const UpdateStats cu = apply_update(central.params, central.opt, t, 0);

  InProcessTransport net;
  auto s = session("fedavg", {1}, net);
  const std::vector<float> g0 = s->server().global();
  s->round();
  const PartyRound& r = s->party(0).last();
  EXPECT_EQ(r.loss.total, cl.total);
  EXPECT_EQ(r.grad_norm, cu.grad_norm);
  EXPECT_GT(r.grad_norm, t.grad_clip);  // clipping was active
  const size_t n = g0.size();
  std::vector<float> c(n), local(n);
  gather(central.params, c.data());
  gather(s->party(0).local().params, local.data());
  EXPECT_EQ(std::memcmp(local.data(), c.data(), n * sizeof(float)), 0) << "the party's step is the centralised step";
  // The server adds exactly that step's update: g1 = g0 + fl(c - g0), bit for bit. That is c
  // itself except where the fp32 difference rounds (a weight that crosses zero, more than
  // halves or more than doubles); there g1 is within one rounding of the update and of c.
  const std::vector<float>& g1 = s->server().global();
  size_t differ = 0;
  auto ulp = [](float x) { return std::nextafter(std::fabs(x), INFINITY) - std::fabs(x); };
  for (size_t i = 0; i < n; ++i) {
    const float u = c[i] - g0[i];
    ASSERT_EQ(g1[i], g0[i] + u) << i;
    if (g1[i] != c[i]) {
      ++differ;
      // Sterbenz: c - g0 is exact when g0/2 <= c <= 2 g0, and then g0 + (c - g0) is c.
      const bool exact = (g0[i] > 0) == (c[i] > 0) && std::fabs(c[i]) <= 2 * std::fabs(g0[i]) &&
                         std::fabs(g0[i]) <= 2 * std::fabs(c[i]);
      EXPECT_FALSE(exact) << i;
      EXPECT_LE(std::fabs(g1[i] - c[i]), ulp(u) + ulp(c[i])) << i;
    }
  }
  EXPECT_LT(differ, n / 50) << "floats of the global model that differ from the centralised step";
  std::printf("global model vs centralised step: %zu of %zu floats differ, each by one rounding\n", differ, n);
  EXPECT_EQ(r.fidelity.cosine, 1.0);
}
