// LoRA in the engine and fedavg-lora: an adapted model starts exactly at its base, only the
// adapters train, merging gives W + s·B·A, a rank above a matrix's rank is refused, and
// fedavg-lora's bytes, steps and server optimizers. (Gradients against PyTorch:
// tests/reference/test_lora.py.)
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>

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
  m.moe_every = 2;  // one dense and one MoE layer: every kind of target
  return m;
}

TrainConfig tiny_train() {
  TrainConfig t = tiny::train();
  t.batch_size = 3;
  t.warmup = 2;
  t.threads = 1;
  return t;
}

LoraSpec all_targets(int rank = 4) { return {rank, 8.0f, {"wq", "wk", "wv", "wo", "router", "experts", "mlp"}}; }

std::vector<int32_t> windows(const ModelConfig& m, const TrainConfig& t, uint64_t seed) {
  std::vector<int32_t> w((size_t)t.grad_accum * t.batch_size * (m.seq_len + 1));
  Rng rng(splitmix64(seed));
  for (auto& x : w) x = (int32_t)(rng.next_u64() % m.vocab_size);
  return w;
}

void randomise_b(LoraAdapters& lora, uint64_t seed) {
  Rng rng(seed);
  for (const ParamTensor& t : lora.params().tensors())
    if (t.name.ends_with(".lora_b"))
      for (size_t i = 0; i < t.numel; ++i) lora.params().value(t.name)[i] = (float)(0.05 * rng.normal());
}

}  // namespace

TEST(Lora, StartsExactlyAtTheBaseAndTrainsOnlyTheAdapters) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  const auto w = windows(m, t, 1);
  LocalModel plain(m, t);
  const LossStats pl = plain.model.forward(w.data(), t.batch_size, 1.0f);

  LoraModel lm(m, t, all_targets());
  EXPECT_EQ(lm.base.grads(), nullptr) << "a frozen base holds no gradient block";
  for (const ParamTensor& p : lm.lora.params().tensors()) {
    const float* v = lm.lora.params().value(p.name);
    double sq = 0;
    for (size_t i = 0; i < p.numel; ++i) sq += (double)v[i] * v[i];
    if (p.name.ends_with(".lora_b")) EXPECT_EQ(sq, 0.0) << p.name;
    else EXPECT_NEAR(std::sqrt(sq / p.numel), 1.0 / std::sqrt((double)p.shape[1]), 0.2 / std::sqrt((double)p.shape[1])) << p.name;
  }
  const LossStats ll = accumulate_gradients(lm.model, lm.lora.params(), w.data(), t.batch_size, 1);
  EXPECT_EQ(ll.total, pl.total) << "B = 0: the adapted model is the base model";

  std::vector<float> before(lm.base.values(), lm.base.values() + lm.base.numel());
  apply_update(lm.lora.params(), lm.opt, t, 0);
  EXPECT_EQ(std::memcmp(before.data(), lm.base.values(), before.size() * 4), 0) << "the base is frozen";
  size_t moved_b = 0;
  for (const ParamTensor& p : lm.lora.params().tensors())
    if (p.name.ends_with(".lora_b"))
      for (size_t i = 0; i < p.numel; ++i) moved_b += lm.lora.params().value(p.name)[i] != 0;
  EXPECT_GT(moved_b, 0u) << "one AdamW step moves B";
}

TEST(Lora, MergeIsWPlusScaledBA) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  LoraModel lm(m, t, all_targets(3));
  randomise_b(lm.lora, 7);
  const auto w = windows(m, t, 2);
  const LossStats adapted = lm.model.forward(w.data(), t.batch_size, 1.0f);

  ParamSet merged(m, ParamSelection{});
  std::memcpy(merged.values(), lm.base.values(), lm.base.numel() * 4);
  lm.lora.merge_into(merged);
  const float s = 8.0f / 3;
  EXPECT_EQ(lm.lora.scale(), s);
  size_t adapted_matrices = 0;
  for (const ParamTensor& p : merged.tensors()) {
    const LoraMap* a = lm.lora.map(p.name);
    if (!a) {
      EXPECT_EQ(std::memcmp(merged.value(p.name), lm.base.value(p.name), p.numel * 4), 0) << p.name;
      continue;
    }
    ++adapted_matrices;
    const float* A = lm.lora.params().value(p.name + ".lora_a");
    const float* B = lm.lora.params().value(p.name + ".lora_b");
    const int out = (int)p.shape[0], in = (int)p.shape[1];
    // Reference in double. The library's float sum may be contracted to FMAs or vectorised
    // differently from any loop written here (it differs between CPUs and compilers), so the
    // bound is a few float roundings of the terms' magnitudes, not bitwise equality.
    for (int i = 0; i < out; ++i)
      for (int j = 0; j < in; ++j) {
        const double w = lm.base.value(p.name)[i * in + j];
        double ba = 0, magnitude = 0;
        for (int k = 0; k < 3; ++k) {
          ba += (double)B[i * 3 + k] * A[k * in + j];
          magnitude += std::fabs((double)B[i * 3 + k] * A[k * in + j]);
        }
        const double tol = 8 * FLT_EPSILON * (std::fabs(w) + s * magnitude) + 1e-30;
        ASSERT_NEAR(merged.value(p.name)[i * in + j], w + (double)s * ba, tol) << p.name << " [" << i << "," << j << "]";
      }
  }
  // 4 attention maps x 2 layers, the router, 4 experts x 3, the dense MLP's 3.
  EXPECT_EQ(adapted_matrices, 8u + 1 + 12 + 3);
  LocalExperts ex(m, merged, t.batch_size * m.seq_len * m.top_k);
  Model plain(m, merged, ex, t.batch_size);
  const LossStats mergedl = plain.forward(w.data(), t.batch_size, 1.0f);
  EXPECT_NEAR(mergedl.total, adapted.total, 1e-5 * adapted.total) << "the merged model computes the adapted one";
  EXPECT_NE(adapted.total, LocalModel(m, t).model.forward(w.data(), t.batch_size, 1.0f).total);
}

TEST(Lora, RankAboveAMatrixRankIsRefused) {
  const ModelConfig m = tiny_model();  // routers are 4 x 32
  try {
    LoraAdapters bad(m, {5, 8.0f, {"router"}}, 16);
    FAIL() << "rank 5 on a 4 x 32 router was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("LoRA rank 5 exceeds the rank of layers.1.router [4 x 32], at most 4"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(LoraAdapters(m, {4, 8.0f, {"router"}}, 16));
  EXPECT_THROW(LoraAdapters(m, {2, 8.0f, {"wq", "lm_head"}}, 16), std::runtime_error);
  EXPECT_THROW(LoraAdapters(m, {0, 8.0f, {"wq"}}, 16), std::runtime_error);
  EXPECT_THROW(LoraAdapters(m, {2, 8.0f, {"wq", "wq"}}, 16), std::runtime_error);
}

namespace {

std::unique_ptr<FedSession> lora_session(const FedConfig& fc, int parties, Transport& net) {
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  ParamSet base(m, ParamSelection{});
  base.init(t.seed);
  std::vector<float> b(trainable_numel(base));
  gather(base, b.data());
  LoraAdapters lora(m, fc.lora, 1);
  lora.init(t.seed);
  std::vector<float> g(trainable_numel(lora.params()));
  gather(lora.params(), g.data());
  return std::make_unique<FedSession>(
      m, t, fc, "fedavg-lora", std::vector<int>(parties, 1), net,
      [m, t](int p, int64_t s, int32_t* w) {
        const auto v = windows(m, t, 100 * (uint64_t)p + (uint64_t)s);
        std::copy(v.begin(), v.end(), w);
      },
      std::move(g), nullptr, b);
}

}  // namespace

TEST(FedLora, BytesPerRoundFollowFromAdapterShapes) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  FedConfig fc;
  fc.lora = all_targets(2);
  // r (in + out) floats per adapted [out, in] matrix, from the shapes alone.
  const size_t C = m.d_model, HD = m.n_heads * m.head_dim(), KVD = m.n_kv_heads * m.head_dim();
  const size_t r = 2, F = m.d_ff, Fd = m.d_ff_dense, E = m.n_experts;
  const size_t attention = r * ((C + HD) + 2 * (C + KVD) + (HD + C));
  const size_t n = 2 * attention + r * (C + E) + E * 3 * r * (C + F) + 3 * r * (C + Fd);
  InProcessTransport net;
  auto s = lora_session(fc, 2, net);
  EXPECT_EQ(s->server().global().size(), n);
  for (int round = 0; round < 3; ++round) s->round();
  for (int p = 0; p < 2; ++p) {
    EXPECT_EQ(net.stats().bytes_received(p), 3 * 4 * n) << "down: the adapters in fp32";
    EXPECT_EQ(net.stats().bytes_sent(p), 3 * (8 + 4 * n)) << "up: token count and the adapter update in fp32";
  }
}

TEST(FedLora, OnePartyRoundIsOneLoraStep) {
  set_num_threads(1);
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train();
  FedConfig fc;
  fc.lora = all_targets(2);
  LoraModel central(m, t, fc.lora);
  const auto w = windows(m, t, 0);
  const LossStats cl = accumulate_gradients(central.model, central.lora.params(), w.data(), t.batch_size, 1);
  apply_update(central.lora.params(), central.opt, t, 0);
  std::vector<float> c(trainable_numel(central.lora.params()));
  gather(central.lora.params(), c.data());

  InProcessTransport net;
  auto s = lora_session(fc, 1, net);
  const std::vector<float> g0 = s->server().global();
  s->round();
  EXPECT_EQ(s->party(0).last().loss.total, cl.total);
  const std::vector<float>& g1 = s->server().global();
  double worst = 0, scale = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    worst = std::max(worst, (double)std::fabs(g1[i] - c[i]));
    scale = std::max(scale, (double)std::fabs(c[i] - g0[i]));
    ASSERT_EQ(g1[i], g0[i] + (c[i] - g0[i])) << i;  // the server adds exactly the party's update
  }
  EXPECT_GT(scale, 0);
  EXPECT_LT(worst, 1e-6 * scale + 1e-7);
}

TEST(FedLora, FedAdamServerStep) {
  set_num_threads(1);
  FedConfig fc;
  fc.lora = all_targets(2);
  fc.server_optimizer = "adam";
  fc.server_lr = 0.01f;
  InProcessTransport net_avg, net_adam;
  FedConfig avg = fc;
  avg.server_optimizer = "avg";
  auto sa = lora_session(avg, 2, net_avg);
  auto sd = lora_session(fc, 2, net_adam);
  const std::vector<float> g0 = sa->server().global();
  sa->round();
  sd->round();
  // Both rounds start from the same state, so the mean update Δ is the averaging server's step;
  // FedAdam's first step is lr·(1-β1)Δ / (sqrt(1-β2)|Δ| + τ).
  const std::vector<float>& ga = sa->server().global();
  const std::vector<float>& gd = sd->server().global();
  size_t moved = 0;
  for (size_t i = 0; i < g0.size(); ++i) {
    const double d = (double)ga[i] - g0[i];
    const double mom = 0.1 * d, v = 0.01 * d * d;
    const double want = g0[i] + 0.01 * mom / (std::sqrt(v) + 1e-3);
    ASSERT_NEAR(gd[i], want, 1e-6 + 1e-4 * std::fabs(want - g0[i])) << i;
    moved += d != 0;
  }
  EXPECT_GT(moved, g0.size() / 2);
}
