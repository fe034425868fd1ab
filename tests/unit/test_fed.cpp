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
#include "tiny.h"

using namespace pcmoe;
using namespace pcmoe::fed;

namespace {

ModelConfig tiny_model() {
  ModelConfig m = tiny::model();
  m.n_experts = 4;
  m.tie_embeddings = false;
  return m;
}

TrainConfig tiny_train() {
  TrainConfig t = tiny::train();
  t.batch_size = 3;
  t.grad_accum = 2;
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

TEST(Fed, ServerAddsTheTokenWeightedMeanOfTheUpdates) {
  set_num_threads(1);
  InProcessTransport net;
  auto s = session("fedavg", {1, 2, 3}, net);  // 1, 2 and 3 local steps: unequal token counts
  const std::vector<float> g0 = s->server().global();
  s->round();
  const size_t n = g0.size();
  std::vector<double> weighted(n, 0.0), plain(n, 0.0);
  double den = 0;
  std::vector<float> local(n);
  for (int p = 0; p < 3; ++p) {
    const double t = (double)s->party(p).last().tokens;
    EXPECT_EQ(t, (p + 1) * 2.0 * 3 * 16);  // local steps x grad_accum x batch x seq_len
    gather(s->party(p).local().params, local.data());
    for (size_t i = 0; i < n; ++i) {
      weighted[i] += t * ((double)local[i] - g0[i]);
      plain[i] += ((double)local[i] - g0[i]) / 3;
    }
    den += t;
  }
  const std::vector<float>& g1 = s->server().global();
  double worst = 0, gap = 0;
  for (size_t i = 0; i < n; ++i) {
    worst = std::max(worst, std::fabs(g1[i] - (g0[i] + weighted[i] / den)));
    gap = std::max(gap, std::fabs(weighted[i] / den - plain[i]));
  }
  EXPECT_LT(worst, 3e-7);  // fp32 updates and one fp32 add to weights of size ~0.1
  EXPECT_GT(gap, 100 * worst);  // the weighting matters at this resolution
}

// A party's uplink weighs its update by its token count: a count that is not finite and > 0,
// or an update with a NaN or infinity, is refused and adds nothing (the round's mean is that of
// the accepted updates, bit for bit as a server that never saw the refused ones).
TEST(Fed, ServerRefusesNonFiniteTokenCountsAndUpdates) {
  const std::vector<float> g0 = initial_state(tiny_model(), tiny_train());
  const size_t n = g0.size();
  FedServer server(tiny_fed(), "fedavg", g0, nullptr), twin(tiny_fed(), "fedavg", g0, nullptr);
  const auto uplink = [n](double tokens, float poison) {
    std::vector<float> u(n);
    for (size_t i = 0; i < n; ++i) u[i] = 1e-3f * float(i % 7) - 2e-3f;
    u[n / 2] += poison;
    Writer w;
    w.f64(tokens);
    w.floats(u.data(), n);
    return w.take();
  };
  const Bytes good = uplink(96, 0);
  server.add(good);
  twin.add(good);
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (const double tokens : {nan, inf, -96.0, 0.0})
    EXPECT_THROW(server.add(uplink(tokens, 0)), std::runtime_error) << tokens;
  for (const float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()})
    EXPECT_THROW(server.add(uplink(96, poison)), std::runtime_error) << poison;
  server.apply();
  twin.apply();
  EXPECT_EQ(std::memcmp(server.global().data(), twin.global().data(), n * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(server.global().data(), g0.data(), n * sizeof(float)), 0) << "the accepted update applied";
}

TEST(Fed, BytesPerRoundFollowFromShapesAndWireType) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  const size_t N = model_floats(m);
  const FedConfig fc = tiny_fed();
  const size_t B = fc.block_size, L = fc.latent(), blocks = (N + B - 1) / B;
  const size_t A = 2 * B * L + B + L;  // autoencoder: We, be, Wd, bd
  struct Case {
    std::string mode;
    int faf;
    size_t down, up;  // per party and round
  };
  const std::vector<Case> cases = {
      {"fedavg", 0, 4 * N, 8 + 4 * N},
      {"int8", 0, 4 * N, 8 + N + 4 * blocks},
      {"topk-ef", 0, 4 * N, 8 + 8 * (4 * (1 + L) * blocks / 8)},
      {"cg-fedllm", 0, 4 * (N + A), 8 + 4 * (1 + L) * blocks},
      {"cg-fedllm", 2, 4 * (N + A), 8 + 4 * (1 + L) * blocks + 4 * A},
  };
  ASSERT_NE(N % B, 0u);  // the last block is partial
  for (const Case& c : cases) {
    FedConfig f = fc;
    f.faf_steps = c.faf;
    InProcessTransport net;
    auto s = session(c.mode, {1, 1}, net, f);
    const int rounds = 2;
    for (int r = 0; r < rounds; ++r) s->round();
    for (int p = 0; p < 2; ++p) {
      const auto& k = net.stats().by_kind_pair;
      EXPECT_EQ(net.stats().bytes_received(p), rounds * c.down) << c.mode << " party " << p;
      EXPECT_EQ(net.stats().bytes_sent(p), rounds * c.up) << c.mode << " party " << p;
      EXPECT_EQ(k.at({MsgKind::kFedRound, 2, p}).messages, (uint64_t)rounds);
      EXPECT_EQ(k.at({MsgKind::kFedRound, p, 2}).messages, (uint64_t)rounds);
    }
    EXPECT_EQ(net.stats().by_kind_pair.size(), 4u) << "only fed_round, server <-> party";
    std::printf("%-9s faf %d: down %zu, up %zu bytes per party and round (fp32 model %zu)\n", c.mode.c_str(), c.faf,
                c.down, c.up, 4 * N);
  }
}

TEST(Fed, FafAveragesThePartiesAutoencoderUpdates) {
  set_num_threads(1);
  InProcessTransport net;
  auto s = session("cg-fedllm", {1, 3}, net);
  const BlockAutoencoder& global = *s->server().autoencoder();
  const std::vector<float> a0(global.params(), global.params() + global.numel());
  s->round();
  const double t0 = (double)s->party(0).last().tokens, t1 = (double)s->party(1).last().tokens;
  const float* a = s->party(0).autoencoder()->params();
  const float* b = s->party(1).autoencoder()->params();
  double worst = 0, moved = 0;
  for (size_t i = 0; i < a0.size(); ++i) {
    const double want = a0[i] + (t0 * ((double)a[i] - a0[i]) + t1 * ((double)b[i] - a0[i])) / (t0 + t1);
    worst = std::max(worst, std::fabs(global.params()[i] - want));
    moved = std::max(moved, std::fabs((double)global.params()[i] - a0[i]));
  }
  EXPECT_LT(worst, 1e-6);
  EXPECT_GT(moved, 1e-4);  // FAF's Adam steps moved it (lr 1e-3 per step)
  EXPECT_GT(s->party(0).last().faf_loss, 0.0);
}

TEST(Fed, SameSeedSameGlobalModel) {
  set_num_threads(1);
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    InProcessTransport net;
    auto s = session("cg-fedllm", {1, 2}, net);
    s->round();
    s->round();
    if (run == 0) {
      first = s->server().global();
    } else {
      EXPECT_EQ(std::memcmp(first.data(), s->server().global().data(), first.size() * 4), 0);
    }
  }
}

TEST(Fed, CodecsKeepExactShapesForPartialBlocks) {
  set_num_threads(1);
  const size_t n = 1000;  // 15 blocks of 64 and a partial one of 40
  const int B = 64;
  std::vector<float> u(n);
  Rng rng(5);
  for (auto& x : u) x = (float)(rng.normal() * 0.01);
  u[7] = 0.5f;  // one large entry
  BlockAutoencoder ae(B, 8, 1);
  std::vector<std::unique_ptr<UpdateCodec>> codecs;
  codecs.push_back(std::make_unique<Fp32Codec>());
  codecs.push_back(std::make_unique<Int8Codec>(B));
  codecs.push_back(std::make_unique<TopKCodec>(n, 50));
  codecs.push_back(std::make_unique<AutoencoderCodec>(ae));
  const size_t want[] = {4 * n, n + 4 * 16, 8 * 50, 4 * 9 * 16};
  for (size_t c = 0; c < codecs.size(); ++c) {
    const Bytes msg = codecs[c]->encode(u.data(), n);
    EXPECT_EQ(msg.size(), want[c]) << c;
    std::vector<float> out(n + 8, 12345.0f);
    codecs[c]->decode(msg, out.data(), n);
    for (size_t i = n; i < n + 8; ++i) EXPECT_EQ(out[i], 12345.0f) << "codec " << c << " wrote past n";
    for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(out[i])) << c;
    EXPECT_THROW(codecs[c]->decode(Bytes(msg.begin(), msg.end() - 1), out.data(), n), std::runtime_error);
    if (c == 0) {
      EXPECT_EQ(std::memcmp(out.data(), u.data(), n * 4), 0);
    }
    if (c == 1) {  // each value within half a step of its block's scale
      for (size_t i = 0; i < n; ++i) {
        float mx = 0;
        for (size_t j = i / B * B; j < std::min(n, i / B * B + B); ++j) mx = std::max(mx, std::fabs(u[j]));
        EXPECT_LE(std::fabs(out[i] - u[i]), mx / 127 * 0.5f * 1.0001f) << i;
      }
    }
    if (c == 2) {  // the 50 largest magnitudes, the rest zero
      std::vector<float> mags(n);
      for (size_t i = 0; i < n; ++i) mags[i] = std::fabs(u[i]);
      std::sort(mags.rbegin(), mags.rend());
      size_t kept = 0;
      for (size_t i = 0; i < n; ++i)
        if (out[i] != 0) {
          ++kept;
          EXPECT_EQ(out[i], u[i]);
          EXPECT_GE(std::fabs(u[i]), mags[49]);
        }
      EXPECT_EQ(kept, 50u);
      EXPECT_EQ(out[7], 0.5f);
    }
    if (c == 3) {  // the partial block: its RMS is over 64 floats, 40 of them real
      const Fidelity f = fidelity(u.data(), out.data(), n);
      EXPECT_TRUE(std::isfinite(f.snr_db));
    }
  }
}

TEST(Fed, TopKErrorFeedbackSendsEverythingEventually) {
  const size_t n = 300, k = 30;
  TopKCodec enc(n, k), dec(n, k);
  std::vector<float> u(n), out(n);
  std::vector<double> sent(n, 0.0), total(n, 0.0);
  Rng rng(9);
  for (int round = 0; round < 6; ++round) {
    for (size_t i = 0; i < n; ++i) total[i] += u[i] = (float)rng.normal();
    dec.decode(enc.encode(u.data(), n), out.data(), n);
    for (size_t i = 0; i < n; ++i) sent[i] += out[i];
  }
  // what was sent plus what is still owed is what the party had to send
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(sent[i] + enc.residual()[i], total[i], 1e-5) << i;
}

namespace {
// The autoencoder's loss in double, written independently of its float forward.
double reference_loss(const BlockAutoencoder& ae, const std::vector<double>& p, const std::vector<float>& x, int M) {
  const int B = ae.block(), L = ae.latent();
  const double* We = p.data();
  const double* be = We + L * B;
  const double* Wd = be + L;
  const double* bd = Wd + B * L;
  double loss = 0;
  for (int r = 0; r < M; ++r) {
    std::vector<double> z(L);
    for (int j = 0; j < L; ++j) {
      double a = be[j];
      for (int i = 0; i < B; ++i) a += We[j * B + i] * x[r * B + i];
      z[j] = std::tanh(a);
    }
    for (int i = 0; i < B; ++i) {
      double y = bd[i];
      for (int j = 0; j < L; ++j) y += Wd[i * L + j] * z[j];
      loss += (y - x[r * B + i]) * (y - x[r * B + i]);
    }
  }
  return loss / (M * B);
}
}  // namespace

TEST(Fed, AutoencoderGradientsMatchFiniteDifferences) {
  set_num_threads(1);
  const int B = 12, L = 3, M = 5;
  BlockAutoencoder ae(B, L, 4);
  // non-zero biases, so their paths are exercised
  Rng rng(2);
  for (size_t i = 0; i < ae.numel(); ++i) ae.params()[i] += (float)(0.1 * rng.normal());
  std::vector<float> x((size_t)M * B);
  for (auto& v : x) v = (float)rng.normal();
  std::vector<float> g(ae.numel());
  const double loss = ae.loss_and_grad(x.data(), M, g.data());
  std::vector<double> p(ae.params(), ae.params() + ae.numel());
  EXPECT_NEAR(loss, reference_loss(ae, p, x, M), 1e-6 * std::fabs(loss));
  EXPECT_NEAR(ae.loss(x.data(), M), loss, 1e-6 * std::fabs(loss));
  double worst = 0, gmax = 0;
  for (size_t i = 0; i < ae.numel(); ++i) {
    const double h = 1e-5, keep = p[i];
    p[i] = keep + h;
    const double up = reference_loss(ae, p, x, M);
    p[i] = keep - h;
    const double down = reference_loss(ae, p, x, M);
    p[i] = keep;
    const double fd = (up - down) / (2 * h);
    worst = std::max(worst, std::fabs(fd - g[i]));
    gmax = std::max(gmax, std::fabs(fd));
  }
  EXPECT_LT(worst / gmax, 1e-5) << "largest gradient " << gmax;
  std::printf("autoencoder gradient vs central differences in double: max error %.2e of max %.2e\n", worst, gmax);
}

TEST(Fed, TgapPretrainingLowersHeldOutReconstructionError) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  TrainConfig t = tiny_train();
  t.steps = 14;
  LocalModel model(m, t);
  const int B = 256, L = 4;  // latent 1/64 of the block, the default ratio
  const BatchFn data = [&](int64_t s, int32_t* w) { random_windows(m, t, 9, s, w); };
  // 14 consecutive steps: the first 10 pre-train, the last 4 are held out
  BlockSet all = record_updates(model, t, 14, data, 64, B, 17);
  const size_t split = all.rows() * 10 / 14;
  BlockSet train{B, std::vector<float>(all.x.begin(), all.x.begin() + split * B)};
  BlockSet held{B, std::vector<float>(all.x.begin() + split * B, all.x.end())};
  ASSERT_GT(held.rows(), 100u);
  BlockAutoencoder ae(B, L, 8);
  const double before = reconstruction_loss(ae, held);
  train_autoencoder(ae, train, 30, 32, 1e-3f, 5);
  const double after = reconstruction_loss(ae, held), fit = reconstruction_loss(ae, train);
  std::printf("TGAP: held-out reconstruction MSE %.4f untrained, %.4f pre-trained (training blocks %.4f)\n", before,
              after, fit);
  // Blocks have unit RMS, so reconstructing zero scores 1.0. Adam updates are close to white
  // within a block: pre-training learns what there is (~30% below the untrained autoencoder,
  // which adds its own noise) and ends just below 1.0; docs/federated.md discusses it.
  EXPECT_LT(after, 0.75 * before);
  EXPECT_LT(after, 1.0);
}
