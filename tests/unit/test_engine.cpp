// Unit tests of the engine's plumbing: safetensors, the arena planner, parameter layout and
// initialisation, config strictness, the learning-rate schedule.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "collab/run_config.h"
#include "model/config.h"
#include "model/params.h"
#include "tensor/arena.h"
#include "tensor/safetensors.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace fs = std::filesystem;
using namespace pcmoe;

namespace {
std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("pcmoe-unit-" + std::to_string(::getpid()) + "-" + name)).string();
}
}  // namespace

TEST(Safetensors, RoundTripKeepsValuesShapesAndMetadata) {
  StFile f;
  const float a[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
  const int32_t b[3] = {7, -1, 2147483647};
  f.put_f32("a", {2, 3}, a);
  f.put_i32("b", {3}, b);
  f.metadata["step"] = "42";
  const std::string path = temp_path("rt.safetensors");
  write_safetensors(path, f);
  StFile g = read_safetensors(path);
  EXPECT_EQ(g.metadata.at("step"), "42");
  const StTensor& ta = g.get("a", {2, 3});
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ta.f32()[i], a[i]);
  const StTensor& tb = g.get("b", {3}, "I32");
  for (int i = 0; i < 3; ++i) EXPECT_EQ(tb.i32()[i], b[i]);
  EXPECT_THROW(g.get("a", {3, 2}), std::runtime_error);
  EXPECT_THROW(g.get("missing", {1}), std::runtime_error);
  // Header length is 8 + JSON padded to 8 bytes; data = 6*4 + 3*4 bytes.
  const auto size = fs::file_size(path);
  EXPECT_EQ((size - 8 - 36) % 8, 0u);
  fs::remove(path);
}

TEST(Safetensors, RejectsTruncatedAndMalformedFiles) {
  StFile f;
  const float a[4] = {1, 2, 3, 4};
  f.put_f32("a", {4}, a);
  const std::string path = temp_path("bad.safetensors");
  write_safetensors(path, f);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& s) { std::ofstream(path, std::ios::binary | std::ios::trunc) << s; };
  write(bytes.substr(0, bytes.size() - 4));
  EXPECT_THROW(read_safetensors(path), std::runtime_error);  // data cut short
  write(bytes.substr(0, 5));
  EXPECT_THROW(read_safetensors(path), std::runtime_error);  // header length cut short
  std::string wrong = bytes;
  wrong[8] = '[';
  write(wrong);
  EXPECT_THROW(read_safetensors(path), std::runtime_error);  // header is not an object
  std::string huge = bytes;
  huge[7] = 0x7f;
  write(huge);
  EXPECT_THROW(read_safetensors(path), std::runtime_error);  // header length beyond the file
  EXPECT_THROW(read_safetensors(temp_path("does-not-exist")), std::runtime_error);
  fs::remove(path);
}

TEST(Arena, MeasuresThenPlacesAlignedBuffersInExactlyTheMeasuredBlock) {
  AlignedBuffer block;
  float* a = nullptr;
  int* b = nullptr;
  double* c = nullptr;
  plan_and_place(block, [&](Arena& ar) {
    a = ar.take<float>(3);
    b = ar.take<int>(17);
    c = ar.take<double>(2);
  });
  EXPECT_EQ(block.bytes(), 64u + 128u + 16u);  // each buffer starts on a 64-byte boundary
  EXPECT_EQ(reinterpret_cast<std::byte*>(a), block.data());
  EXPECT_EQ(reinterpret_cast<std::byte*>(b), block.data() + 64);
  EXPECT_EQ(reinterpret_cast<std::byte*>(c), block.data() + 192);
}

TEST(ParamSet, LayoutFollowsTheConfigAndSelection) {
  ModelConfig cfg;
  cfg.vocab_size = 50;
  cfg.d_model = 16;
  cfg.n_layers = 2;
  cfg.n_heads = 2;
  cfg.n_kv_heads = 1;
  cfg.d_ff = 8;
  cfg.d_ff_dense = 12;
  cfg.n_experts = 3;
  cfg.moe_every = 2;  // layer 0 dense, layer 1 MoE
  cfg.tie_embeddings = false;
  ParamSet all(cfg, ParamSelection{});
  EXPECT_TRUE(all.has("layers.0.mlp.w1"));
  EXPECT_FALSE(all.has("layers.0.router"));
  EXPECT_TRUE(all.has("layers.1.router"));
  EXPECT_TRUE(all.has("layers.1.experts.2.w2"));
  EXPECT_TRUE(all.has("head"));
  EXPECT_EQ(all.info("layers.0.wk").shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(all.info("layers.1.experts.0.w2").shape, (std::vector<int64_t>{16, 8}));
  EXPECT_FALSE(all.info("final_norm").decay);
  EXPECT_TRUE(all.info("wte").decay);

  ParamSelection shard;
  shard.backbone = false;
  shard.expert = [](int, int e) { return e == 1; };
  ParamSet experts_only(cfg, shard);
  ASSERT_EQ(experts_only.tensors().size(), 3u);
  EXPECT_TRUE(experts_only.has("layers.1.experts.1.w3"));
  EXPECT_FALSE(experts_only.has("wte"));

  // A tensor's initial values depend on (seed, name) only, not on what else the set holds.
  all.init(5);
  experts_only.init(5);
  const auto& t = all.info("layers.1.experts.1.w1");
  for (size_t i = 0; i < t.numel; ++i)
    ASSERT_EQ(all.value(t.name)[i], experts_only.value(t.name)[i]);
  EXPECT_EQ(all.value("final_norm")[3], 1.0f);
  double sum2 = 0;
  const auto& wte = all.info("wte");
  for (size_t i = 0; i < wte.numel; ++i) sum2 += double(all.value("wte")[i]) * all.value("wte")[i];
  EXPECT_NEAR(std::sqrt(sum2 / wte.numel), 0.02, 0.002);
}

TEST(Config, StrictKeysTypesAndConsistency) {
  EXPECT_NO_THROW(model_config_from_json(nlohmann::json::object()));
  EXPECT_THROW(model_config_from_json({{"d_modle", 4}}), std::runtime_error);
  EXPECT_THROW(model_config_from_json({{"d_model", "big"}}), std::runtime_error);
  EXPECT_THROW(model_config_from_json({{"d_model", 1.5}}), std::runtime_error);
  EXPECT_THROW(model_config_from_json({{"top_k", 9}}), std::runtime_error);  // > n_experts
  EXPECT_THROW(model_config_from_json({{"n_kv_heads", 3}}), std::runtime_error);
  EXPECT_THROW(train_config_from_json({{"warmup", 700}}), std::runtime_error);  // >= steps
  EXPECT_THROW(run_config_from_json({{"modle", nlohmann::json::object()}}), std::runtime_error);
  ModelConfig c = model_config_from_json({{"n_layers", 6}, {"moe_every", 3}});
  EXPECT_EQ(c.n_moe_layers(), 2);
  EXPECT_FALSE(c.is_moe(0));
  EXPECT_TRUE(c.is_moe(2));
  EXPECT_EQ(to_json(model_config_from_json(to_json(c))), to_json(c));
}

TEST(Schedule, WarmupThenCosineToMinLr) {
  TrainConfig t;
  t.lr = 1.0f;
  t.min_lr = 0.1f;
  t.warmup = 4;
  t.steps = 14;
  EXPECT_FLOAT_EQ(learning_rate(t, 0), 0.25f);
  EXPECT_FLOAT_EQ(learning_rate(t, 3), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(t, 4), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(t, 9), 0.55f);  // half way: min + (max - min) / 2
  EXPECT_NEAR(learning_rate(t, 14), 0.1f, 1e-6);
}
