// collab.wire_dtype: the bf16 / fp16 conversions against torch's .to(torch.bfloat16 / float16)
// on random and edge values, exact round trips of representable values, the exact byte counts
// of expert calls in each dtype, and a PC-MoE session whose traffic halves.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "collab/expert_host.h"
#include "collab/expert_wire.h"
#include "collab/session.h"
#include "tensor/rng.h"
#include "../unit/hosts.h"
#include "../unit/tiny.h"

namespace fs = std::filesystem;
using namespace pcmoe;

namespace {

uint32_t bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}

TEST(WireDtype, RepresentableValuesRoundTripExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float b = bf16_to_float((uint16_t)h), f = fp16_to_float((uint16_t)h);
    if (!std::isnan(b)) EXPECT_EQ(float_to_bf16(b), h) << "bf16 " << h;
    else EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(b))));
    if (!std::isnan(f)) EXPECT_EQ(float_to_fp16(f), h) << "fp16 " << h;
    else EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(f))));
  }
  EXPECT_EQ(fp16_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
}

TEST(WireDtype, NamesAreStrict) {
  EXPECT_EQ(parse_wire_dtype("fp32"), WireDtype::kF32);
  EXPECT_EQ(parse_wire_dtype("bf16"), WireDtype::kBF16);
  EXPECT_EQ(parse_wire_dtype("fp16"), WireDtype::kF16);
  for (const char* bad : {"FP16", "float16", "bfloat16", "fp8", ""}) {
    try {
      parse_wire_dtype(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("expected fp32, bf16 or fp16"), std::string::npos) << e.what();
    }
  }
}

// Values that exercise every rounding path: random normals at many scales, exact ties and their
// neighbours of both formats, fp16 subnormals and underflow, overflow thresholds, zeros, inf.
std::vector<float> probe_values() {
  std::vector<float> v;
  Rng rng(2024);
  for (int i = 0; i < 200000; ++i) {
    const double scale = std::ldexp(1.0, (int)(rng.next_u64() % 60) - 40);
    v.push_back((float)(rng.normal() * scale));
  }
  for (int i = 0; i < 20000; ++i) {  // raw bit patterns, NaN excluded
    const float f = std::bit_cast<float>((uint32_t)rng.next_u64());
    if (!std::isnan(f)) v.push_back(f);
  }
  for (int i = 0; i < 5000; ++i) {
    const uint32_t b = (uint32_t)rng.next_u64();
    v.push_back(std::bit_cast<float>((b & 0xffff0000u) | 0x8000u));          // bf16 tie
    v.push_back(std::bit_cast<float>((b & 0xffff0000u) | 0x8001u));          // just above a tie
    const float h = fp16_to_float((uint16_t)(b & 0x7bff));                    // a finite fp16 value
    v.push_back(std::bit_cast<float>(bits(h) | 0x1000u));                     // its fp16 tie (normals)
    v.push_back(std::bit_cast<float>(bits(h) | 0x0fffu));
    v.push_back((float)((b & 0x3ff) + 0.5) * 0x1p-24f);                      // subnormal ties
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e5f, 0x1p-25f, 0x1.0001p-25f, 0x1p-26f,
                  3.3895314e38f, 3.4028235e38f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min()})
    v.push_back(f);
  return v;
}

TEST(WireDtype, RoundingMatchesTorch) {
  const std::vector<float> v = probe_values();
  const fs::path dir = fs::temp_directory_path() / ("pcmoe-dtype-" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "in.f32", std::ios::binary).write(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  const std::string script =
      "import sys, torch\n"
      "d = sys.argv[1]\n"
      "x = torch.frombuffer(bytearray(open(d + '/in.f32', 'rb').read()), dtype=torch.float32)\n"
      "for name, dt in (('bf16', torch.bfloat16), ('fp16', torch.float16)):\n"
      "    open(d + '/' + name, 'wb').write(x.to(dt).view(torch.int16).numpy().tobytes())\n";
  std::ofstream(dir / "convert.py") << script;
  ASSERT_EQ(std::system(("/usr/bin/python3 " + (dir / "convert.py").string() + " " + dir.string()).c_str()), 0)
      << "torch (python3-torch) is needed for this test";
  for (const char* name : {"bf16", "fp16"}) {
    std::ifstream in(dir / name, std::ios::binary);
    std::vector<uint16_t> ref(v.size());
    in.read(reinterpret_cast<char*>(ref.data()), ref.size() * 2);
    ASSERT_EQ((size_t)in.gcount(), ref.size() * 2);
    const bool bf = std::string(name) == "bf16";
    size_t wrong = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t ours = bf ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
      const float back = bf ? bf16_to_float(ours) : fp16_to_float(ours);
      if (std::isnan(v[i])) {  // torch writes one canonical NaN; any quiet NaN is right
        if (!std::isnan(back) || !std::isnan(bf ? bf16_to_float(ref[i]) : fp16_to_float(ref[i]))) ++wrong;
        continue;
      }
      if (ours != ref[i] && ++wrong <= 5)
        ADD_FAILURE() << name << " of " << v[i] << " (0x" << std::hex << bits(v[i]) << "): ours 0x" << ours << ", torch 0x"
                      << ref[i] << std::dec;
    }
    EXPECT_EQ(wrong, 0u) << name << ": " << wrong << " of " << v.size() << " values differ from torch";
  }
  fs::remove_all(dir);
}

TEST(WireDtype, OverflowIsAnErrorNotAnInfinity) {
  std::vector<std::byte> b(2);
  const float ok[] = {65504.0f, 65519.0f, -65519.0f, std::numeric_limits<float>::infinity()};
  for (float f : ok) EXPECT_NO_THROW(put_rows(WireDtype::kF16, &f, 1, b.data())) << f;
  const float big = 65520.0f;
  try {
    put_rows(WireDtype::kF16, &big, 1, b.data());
    ADD_FAILURE() << "65520 was sent as fp16";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("beyond its range (65504); use bf16"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(put_rows(WireDtype::kBF16, &big, 1, b.data()));
  const float huge = 3.4028235e38f;
  EXPECT_THROW(put_rows(WireDtype::kBF16, &huge, 1, b.data()), std::runtime_error);
}

ModelConfig small_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.d_model = 16;
  m.n_layers = 2;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 12;
  m.d_ff_dense = 20;
  m.n_experts = 4;
  m.top_k = 2;
  m.moe_every = 1;
  m.seq_len = 8;
  return m;
}

TEST(WireDtype, ExpertCallBytesAreExact) {
  const ModelConfig m = small_model();
  const std::vector<int> hosted = {1, 3};           // party 1 of 2
  const std::vector<int> offsets = {0, 2, 7, 7, 10};  // rows 2, 5, 0, 3: the host gets 5 + 3
  std::vector<float> x(10 * m.d_model);
  for (size_t i = 0; i < x.size(); ++i) x[i] = bf16_to_float(float_to_bf16(std::ldexp(1.0f + i % 7, (int)(i % 9) - 4)));
  const size_t rows = 8, header = 4 + 4 + 2 * 4;
  for (WireDtype d : {WireDtype::kF32, WireDtype::kBF16, WireDtype::kF16}) {
    const Bytes req = encode_expert_request(MsgKind::kExpertForward, m, 1, hosted, offsets.data(), x.data(), nullptr, 0, d);
    EXPECT_EQ(req.size(), header + rows * m.d_model * (d == WireDtype::kF32 ? 4 : 2)) << to_string(d);
    ExpertRequest got;
    decode_expert_request(MsgKind::kExpertForward, req, m, hosted, 64, got, d);
    EXPECT_EQ(got.offsets, (std::vector<int>{0, 0, 5, 5, 8}));
    for (int r = 0; r < 5; ++r)  // values representable in every dtype come back exactly
      for (int c = 0; c < m.d_model; ++c) EXPECT_EQ(got.rows[r * m.d_model + c], x[(2 + r) * m.d_model + c]);
    EXPECT_THROW(decode_expert_request(MsgKind::kExpertForward, req, m, hosted, 64, got,
                                       d == WireDtype::kF32 ? WireDtype::kBF16 : WireDtype::kF32),
                 std::runtime_error)
        << "a request read in another dtype has the wrong length";
    const Bytes reply = encode_expert_reply(x.data(), rows * m.d_model, nullptr, 0, d);
    EXPECT_EQ(reply.size(), rows * m.d_model * (d == WireDtype::kF32 ? 4 : 2));
    std::vector<float> back(10 * m.d_model, -1.0f);
    decode_expert_reply(reply, m, hosted, offsets.data(), back.data(), nullptr, 0, d);
    EXPECT_EQ(back[2 * m.d_model], x[0]) << "the reply fills the hosted experts' rows, in order";
    EXPECT_EQ(back[0], -1.0f) << "rows of experts on other hosts are left alone";
  }
  EXPECT_THROW(encode_expert_request(MsgKind::kExpertBackwardUnits, m, 1, hosted, offsets.data(), x.data(), nullptr, 0,
                                     WireDtype::kBF16),
               std::runtime_error);
}

// A whole PC-MoE turn in each dtype: every expert call's rows take 4 or 2 bytes per float, so
// request bytes = messages x header + reply bytes, with reply bytes = floats x (4 | 2).
TEST(WireDtype, SessionTrafficHalves) {
  const ModelConfig m = small_model();
  TrainConfig t;
  t.batch_size = 3;
  t.threads = 1;
  t.seed = 5;
  const std::vector<int32_t> w = tiny::windows(m, t, 3);
  uint64_t fp32_reply_bytes = 0;
  double fp32_loss = 0, fp32_norm = 0;
  for (WireDtype d : {WireDtype::kF32, WireDtype::kBF16, WireDtype::kF16}) {
    InProcessTransport net;
    PcMoeSession s(m, t, 2, net, 0, {}, d);
    const TurnResult r = s.train_turn(test::start_at_turn_of(s, t.seed, 0), w.data());
    const TrafficCount req = net.stats().by_kind_pair.at({MsgKind::kExpertForward, 0, 1});
    const TrafficCount rep = net.stats().by_kind_pair.at({MsgKind::kExpertForward, 1, 0});
    const TrafficCount breq = net.stats().by_kind_pair.at({MsgKind::kExpertBackward, 0, 1});
    const TrafficCount brep = net.stats().by_kind_pair.at({MsgKind::kExpertBackward, 1, 0});
    const uint64_t header = 4 + 4 + 2 * 4;  // layer, k = 2 hosted experts, their row counts
    EXPECT_EQ(req.bytes, req.messages * header + rep.bytes) << to_string(d);
    EXPECT_EQ(breq.bytes, breq.messages * header + brep.bytes) << to_string(d);
    EXPECT_EQ(brep.bytes, rep.bytes) << "backward carries as many rows as forward";
    EXPECT_EQ(rep.bytes % (m.d_model * wire_float_bytes(d)), 0u);
    if (d == WireDtype::kF32) {
      fp32_reply_bytes = rep.bytes;
      fp32_loss = r.loss.total;
      fp32_norm = r.grad_norm;
    } else {
      // The first MoE layer's routing is computed before any rounding; all layers here route
      // the same rows (checked by the exact halving), and the loss moves only by the rounding.
      EXPECT_EQ(rep.bytes * 2, fp32_reply_bytes) << to_string(d);
      EXPECT_NEAR(r.loss.total, fp32_loss, 1e-2) << to_string(d);
      EXPECT_NE(r.grad_norm, fp32_norm) << to_string(d) << ": rounding the rows must show in the gradients";
    }
  }
}

}  // namespace
