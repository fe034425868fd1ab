// A deterministic fuzz run of every decoder a peer's bytes reach: the protobuf codec of
// src/net/wire.cpp, the chunk reassembly of streamed calls, the expert-call codec of
// src/collab/expert_wire.cpp in every wire dtype, and an ExpertHost's handle(). 100,000 inputs
// from a fixed seed (valid messages mutated: bit flips, random bytes, truncation, extension,
// splices; and random bytes; the host's also from parties whose turn it is not): each one must
// decode or be refused with std::runtime_error (or a gRPC status), never crash. A twin host is
// handed only the inputs the host accepted: after every input the two are the same bit for bit
// (weights, gradients, AdamW state and step, turn) and answer alike, so a refused input changed
// nothing, its forward state included. The weights exchange's host (weight fetches and gradient
// sums, collab.exchange "weights") gets a run of its own. Build with -fsanitize=address,undefined
// to check memory safety too.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "collab/expert_host.h"
#include "collab/expert_wire.h"
#include "collab/weights_wire.h"
#include "net/grpc_transport.h"
#include "net/wire.h"
#include "tensor/rng.h"
#include "../unit/hosts.h"

using namespace pcmoe;
using namespace pcmoe::net;

namespace {

std::string mutate(Rng& rng, const std::string& seed, const std::vector<std::string>& pool) {
  std::string s = seed;
  const int edits = 1 + (int)(rng.next_u64() % 4);
  for (int i = 0; i < edits; ++i) {
    const uint64_t r = rng.next_u64();
    switch (r % 7) {
      case 0:
        if (!s.empty()) s[(r >> 8) % s.size()] ^= char(1 << ((r >> 40) % 8));
        break;
      case 1:
        if (!s.empty()) s[(r >> 8) % s.size()] = char(r >> 48);
        break;
      case 2: s.resize(s.empty() ? 0 : (r >> 8) % s.size()); break;  // truncate
      case 3: s += std::string(1 + (r >> 8) % 16, char(r >> 48)); break;
      case 4: {  // splice in part of another message
        const std::string& o = pool[(r >> 8) % pool.size()];
        if (!o.empty()) s.insert(s.empty() ? 0 : (r >> 20) % s.size(), o.substr((r >> 32) % o.size(), 1 + (r >> 48) % 32));
        break;
      }
      case 5:  // a small or huge little-endian u32 somewhere (row counts, layers, lengths)
        if (s.size() >= 4) {
          const uint32_t v = (r >> 60) & 1 ? (uint32_t)(r >> 8) : (uint32_t)((r >> 8) % 70);
          std::memcpy(&s[(r >> 40) % (s.size() - 3)], &v, 4);
        }
        break;
      default: {  // random bytes
        s.resize((r >> 8) % 96);
        for (char& c : s) c = char(rng.next_u64());
      }
    }
  }
  return s;
}

Bytes bytes_of(const std::string& s) {
  return Bytes(reinterpret_cast<const std::byte*>(s.data()), reinterpret_cast<const std::byte*>(s.data()) + s.size());
}
std::string string_of(const Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

// Runs f; true if it returned, false if it threw std::runtime_error (anything else fails the test).
bool accepts(const std::function<void()>& f) {
  try {
    f();
    return true;
  } catch (const std::runtime_error&) {
    return false;
  }
}

ModelConfig fuzz_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.d_model = 8;
  m.n_layers = 3;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.d_ff = 6;
  m.d_ff_dense = 10;
  m.n_experts = 4;
  m.top_k = 2;
  m.moe_every = 2;  // layer 1 is MoE, 0 and 2 dense: calls for dense layers must be refused
  m.seq_len = 4;
  return m;
}

TEST(Fuzz, DecodersRefuseOrAcceptNeverCrash) {
  const ModelConfig m = fuzz_model();
  TrainConfig t;
  t.batch_size = 2;
  t.threads = 1;
  const int max_rows = t.batch_size * m.seq_len * m.top_k;
  const std::vector<int> hosted = {1, 3};  // party 1 of 2
  const std::vector<int> offsets = {0, 3, 5, 6, 9};
  std::vector<float> x(9 * m.d_model);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * float(i % 13) - 0.5f;
  const std::vector<int> units = {0, 0, 1, 0, 1, 0, 1, 1, 1};

  // Seeds: valid messages of every kind.
  std::vector<std::pair<MsgKind, std::string>> host_seeds;
  for (MsgKind k : {MsgKind::kExpertForward, MsgKind::kExpertBackward})
    host_seeds.push_back({k, string_of(encode_expert_request(k, m, 1, hosted, offsets.data(), x.data()))});
  host_seeds.push_back({MsgKind::kExpertBackwardUnits,
                        string_of(encode_expert_request(MsgKind::kExpertBackwardUnits, m, 1, hosted, offsets.data(),
                                                        x.data(), units.data(), 2))});
  Writer sums;
  sums.u32(static_cast<uint32_t>(ControlOp::kGradSqSums));
  host_seeds.push_back({MsgKind::kControl, string_of(sums.take())});
  Writer upd;
  upd.u32(3);
  upd.f32(0.5f);
  upd.f32(1e-3f);
  host_seeds.push_back({MsgKind::kControl, string_of(upd.take())});
  Writer clip;
  clip.u32(4);
  clip.u32(1);
  clip.u32(2);
  clip.f32(0.5f);
  clip.f32(1.0f);
  host_seeds.push_back({MsgKind::kControl, string_of(clip.take())});
  Writer noisy;
  noisy.u32(5);
  noisy.f32(0.1f);
  noisy.f32(0.5f);
  noisy.f32(1e-3f);
  noisy.u64(3);
  host_seeds.push_back({MsgKind::kControl, string_of(noisy.take())});
  const size_t begin_seed = host_seeds.size();  // its turn is the host's next: written when drawn
  host_seeds.push_back({MsgKind::kControl, string_of(test::begin_message(0))});
  std::vector<std::string> pool;
  for (const auto& [k, s] : host_seeds) pool.push_back(s);
  wire::CallRequest cr{1, 1, 7, host_seeds[0].second};
  wire::CallChunk cc{2, 1, 9, 5000, 3, "chunk"};
  wire::JoinRequest jr{1, 2, 1000, 4, 40, 0, {{"model", "abcdef"}, {"tokenizer", "0123"}}};
  wire::TurnReply tr{3, true, 77, 19, "party2 died"};
  wire::TurnDoneRequest td{2, 11};
  for (const std::string& s : {wire::encode(cr), wire::encode(cc), wire::encode(jr), wire::encode(tr), wire::encode(td)})
    pool.push_back(s);

  ExpertHost host(m, t, 1, 2, max_rows, HostPrivacy{true, true, 7}), twin(m, t, 1, 2, max_rows, HostPrivacy{true, true, 7});

  Rng rng(20261126);
  const int n = 100000;
  int accepted = 0, refused = 0, host_accepted = 0, host_refused = 0;
  ExpertRequest req;
  std::vector<float> out(max_rows * m.d_model);
  std::vector<double> unit_sq(max_rows);
  for (int i = 0; i < n; ++i) {
    const int target = i % 5;
    const std::string& seed = pool[rng.next_u64() % pool.size()];
    const std::string input = mutate(rng, seed, pool);
    bool ok = false;
    switch (target) {
      case 0: {  // every protobuf message type reads the same bytes
        ok = accepts([&] { wire::CallRequest r; wire::decode(input, r); });
        ok &= accepts([&] { wire::CallChunk r; wire::decode(input, r); });
        ok &= accepts([&] { wire::JoinRequest r; wire::decode(input, r); });
        ok &= accepts([&] { wire::TurnReply r; wire::decode(input, r); });
        ok &= accepts([&] { wire::TurnDoneRequest r; wire::decode(input, r); });
        ok &= accepts([&] { wire::BarrierRequest r; wire::decode(input, r); });
        ok &= accepts([&] {  // what decodes re-encodes to something that decodes the same
          wire::CallChunk a, b;
          wire::decode(input, a);
          wire::decode(wire::encode(a), b);
          if (a.kind != b.kind || a.from != b.from || a.step != b.step || a.total_bytes != b.total_bytes ||
              a.seq != b.seq || a.data != b.data)
            ADD_FAILURE() << "CallChunk does not survive a round trip";
        });
        ok &= accepts([&] {  // and so does a map of section hashes
          wire::JoinRequest a, b;
          wire::decode(input, a);
          wire::decode(wire::encode(a), b);
          if (a.sections != b.sections || a.party != b.party || a.end_turn != b.end_turn)
            ADD_FAILURE() << "JoinRequest does not survive a round trip";
        });
        break;
      }
      case 1: {  // a stream of mutated chunks
        ChunkAssembly a(4096);
        grpc::Status s;
        const int chunks = 1 + (int)(rng.next_u64() % 4);
        for (int c = 0; c < chunks && s.ok(); ++c) {
          wire::CallChunk chunk;
          if (!accepts([&] { wire::decode(c == 0 ? input : mutate(rng, input, pool), chunk); })) break;
          s = a.add(std::move(chunk));
        }
        ok = s.ok() && a.finish().ok();
        if (ok) {
          EXPECT_EQ(a.payload().size(), a.head().total_bytes);
        }
        break;
      }
      case 2: {  // expert requests and replies, every kind and dtype
        const MsgKind k = std::array{MsgKind::kExpertForward, MsgKind::kExpertBackward,
                                     MsgKind::kExpertBackwardUnits}[rng.next_u64() % 3];
        const WireDtype d = std::array{WireDtype::kF32, WireDtype::kBF16, WireDtype::kF16}[rng.next_u64() % 3];
        ok = accepts([&] { decode_expert_request(k, bytes_of(input), m, hosted, max_rows, req, d); });
        if (ok) {
          EXPECT_LE(req.n_rows(), max_rows);
          EXPECT_EQ(req.rows.size(), (size_t)req.n_rows() * m.d_model);
        }
        ok &= accepts([&] {
          decode_expert_reply(bytes_of(input), m, hosted, offsets.data(), out.data(), unit_sq.data(),
                              (int)(rng.next_u64() % 3), d);
        });
        break;
      }
      default: {  // the host itself, mostly from the party whose turn it is (or is next)
        const size_t which = rng.next_u64() % host_seeds.size();
        const MsgKind kind = host_seeds[which].first;
        const std::string s = which == begin_seed ? string_of(test::begin_message(host.turn())) : host_seeds[which].second;
        const std::string msg = rng.next_u64() % 4 ? mutate(rng, s, pool) : s;
        const int holder = host.holder() >= 0 ? host.holder() : turn_holder(t.seed, 2, (int64_t)host.turn());
        const int from = rng.next_u64() % 8 ? holder : (int)(rng.next_u64() % 3);
        Bytes reply;
        ok = accepts([&] { reply = host.handle(kind, from, bytes_of(msg)); });
        if (ok) {
          EXPECT_EQ(twin.handle(kind, from, bytes_of(msg)), reply) << "input " << i;
        }
        ASSERT_EQ(test::first_difference(test::HostState(host), test::HostState(twin)), "")
            << "input " << i << (ok ? ", accepted," : ", refused,") << " left the host unlike its twin";
        (ok ? host_accepted : host_refused)++;
      }
    }
    (ok ? accepted : refused)++;
  }
  EXPECT_EQ(accepted + refused, n);
  // The mutations reach both sides of every check: the host served and refused many calls.
  EXPECT_GT(host_accepted, 1000);
  EXPECT_GT(host_refused, 1000);
  EXPECT_GT(host.turn(), 100u) << "whole turns, their updates included, are served between the refusals";
  std::printf("fuzz: %d inputs, %d accepted everywhere, %d refused somewhere; host: %d served, %d refused, %llu turns ended\n",
              n, accepted, refused, host_accepted, host_refused, (unsigned long long)host.turn());
}

// The weights exchange's host and its codec: mutated fetches, gradient sums (fp32 and bf16) and
// control messages, mostly from the turn's holder. Refused inputs change nothing; whole turns
// (every hosted expert's sum, the norms, the update) are served between them.
TEST(Fuzz, WeightsExchangeHostRefusesOrServesNeverCrashes) {
  const ModelConfig m = fuzz_model();
  TrainConfig t;
  t.batch_size = 2;
  t.threads = 1;
  const int max_rows = t.batch_size * m.seq_len * m.top_k;
  const std::vector<int> hosted = {1, 3};  // party 1 of 2; layer 1 is the only MoE layer
  std::vector<float> g(expert_floats(m));
  for (size_t i = 0; i < g.size(); ++i) g[i] = 0.01f * float(i % 11) - 0.05f;
  const size_t fc = g.size() / 3;
  std::vector<std::pair<MsgKind, std::string>> seeds;
  for (int e : hosted) {
    seeds.push_back({MsgKind::kExpertWeights, string_of(encode_weights_request(1, e))});
    const ExpertRef ref{1, e};
    seeds.push_back({MsgKind::kExpertGrads, string_of(encode_expert_floats(g.data(), g.data() + fc, g.data() + 2 * fc, m,
                                                                           WireDtype::kF32, &ref))});
  }
  Writer sums, upd;
  sums.u32(static_cast<uint32_t>(ControlOp::kGradSqSums));
  seeds.push_back({MsgKind::kControl, string_of(sums.take())});
  upd.u32(3);
  upd.f32(0.5f);
  upd.f32(1e-3f);
  seeds.push_back({MsgKind::kControl, string_of(upd.take())});
  const size_t begin_seed = seeds.size();
  seeds.push_back({MsgKind::kControl, string_of(test::begin_message(0))});
  std::vector<std::string> pool;
  for (const auto& [k, s] : seeds) pool.push_back(s);

  ExpertHost host(m, t, 1, 2, max_rows, {}, WireDtype::kF32, Exchange::kWeights),
      twin(m, t, 1, 2, max_rows, {}, WireDtype::kF32, Exchange::kWeights);
  Rng rng(20261127);
  const int n = 30000;
  int host_accepted = 0, host_refused = 0, codec_accepted = 0;
  std::vector<float> out(g.size());
  for (int i = 0; i < n; ++i) {
    const size_t which = rng.next_u64() % seeds.size();
    const MsgKind kind = seeds[which].first;
    const std::string s = which == begin_seed ? string_of(test::begin_message(host.turn())) : seeds[which].second;
    const std::string msg = rng.next_u64() % 4 ? mutate(rng, s, pool) : s;
    if (i % 3 == 0) {  // the codec alone, both dtypes
      const WireDtype d = rng.next_u64() % 2 ? WireDtype::kF32 : WireDtype::kBF16;
      const Bytes b = bytes_of(msg);
      codec_accepted += accepts([&] { decode_weights_request(b, m, hosted); });
      codec_accepted += accepts([&] { decode_weights_reply(b, m, d, out.data(), out.data() + fc, out.data() + 2 * fc); });
      codec_accepted += accepts([&] { decode_grads_request(b, m, hosted, d, out.data(), out.data() + fc, out.data() + 2 * fc); });
      continue;
    }
    const int holder = host.holder() >= 0 ? host.holder() : turn_holder(t.seed, 2, (int64_t)host.turn());
    const int from = rng.next_u64() % 8 ? holder : (int)(rng.next_u64() % 3);
    Bytes reply;
    const bool ok = accepts([&] { reply = host.handle(kind, from, bytes_of(msg)); });
    if (ok) {
      EXPECT_EQ(twin.handle(kind, from, bytes_of(msg)), reply) << "input " << i;
    }
    ASSERT_EQ(test::first_difference(test::HostState(host), test::HostState(twin)), "")
        << "input " << i << (ok ? ", accepted," : ", refused,") << " left the host unlike its twin";
    (ok ? host_accepted : host_refused)++;
  }
  EXPECT_GT(host_accepted, 1000);
  EXPECT_GT(host_refused, 1000);
  EXPECT_GT(codec_accepted, 100);
  EXPECT_GT(host.turn(), 20u) << "whole turns, their updates included, are served between the refusals";
  std::printf("weights fuzz: host %d served, %d refused, %llu turns ended\n", host_accepted, host_refused,
              (unsigned long long)host.turn());
}

// A host of concurrent rounds (collab.schedule "concurrent"): mutated expert calls and control
// messages from both parties at random, and now and then from a party that does not exist. A
// refused call changes nothing, no party's slot included; whole rounds (both parties' updates,
// then the step) are served between the refusals.
TEST(Fuzz, ConcurrentHostRefusesOrServesNeverCrashes) {
  const ModelConfig m = fuzz_model();
  TrainConfig t;
  t.batch_size = 2;
  t.threads = 1;
  const int max_rows = t.batch_size * m.seq_len * m.top_k;
  const std::vector<int> hosted = {1, 3};  // party 1 of 2; layer 1 is the only MoE layer
  const std::vector<int> offsets = {0, 3, 5, 6, 9};
  std::vector<float> x(9 * m.d_model);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0.1f * float(i % 13) - 0.5f;
  std::vector<std::pair<MsgKind, std::string>> seeds;
  for (MsgKind k : {MsgKind::kExpertForward, MsgKind::kExpertBackward})
    seeds.push_back({k, string_of(encode_expert_request(k, m, 1, hosted, offsets.data(), x.data()))});
  Writer sums, upd;
  sums.u32(static_cast<uint32_t>(ControlOp::kGradSqSums));
  seeds.push_back({MsgKind::kControl, string_of(sums.take())});
  upd.u32(3);
  upd.f32(0.5f);
  upd.f32(1e-3f);
  seeds.push_back({MsgKind::kControl, string_of(upd.take())});
  const size_t begin_seed = seeds.size();  // the caller's turn of the open round: written when drawn
  seeds.push_back({MsgKind::kControl, string_of(test::begin_message(0))});
  std::vector<std::string> pool;
  for (const auto& [k, s] : seeds) pool.push_back(s);

  const auto make = [&] {
    return std::make_unique<ExpertHost>(m, t, 1, 2, max_rows, HostPrivacy{}, WireDtype::kF32, Exchange::kActivations,
                                        Schedule::kConcurrent);
  };
  std::unique_ptr<ExpertHost> host = make(), twin = make();
  Rng rng(20261128);
  const int n = 30000;
  int accepted = 0, refused = 0;
  for (int i = 0; i < n; ++i) {
    const int from = rng.next_u64() % 8 ? (int)(rng.next_u64() % 2) : (int)(rng.next_u64() % 4) - 1;
    const size_t which = rng.next_u64() % seeds.size();
    const MsgKind kind = seeds[which].first;
    const std::string s =
        which == begin_seed ? string_of(test::begin_message(host->turn() + (uint64_t)std::max(from, 0))) : seeds[which].second;
    const std::string msg = rng.next_u64() % 2 ? mutate(rng, s, pool) : s;  // half intact: rounds end
    Bytes reply;
    const bool ok = accepts([&] { reply = host->handle(kind, from, bytes_of(msg)); });
    if (ok) {
      EXPECT_EQ(twin->handle(kind, from, bytes_of(msg)), reply) << "input " << i;
    }
    ASSERT_EQ(test::first_difference(test::HostState(*host), test::HostState(*twin)), "")
        << "input " << i << (ok ? ", accepted," : ", refused,") << " left the host unlike its twin";
    (ok ? accepted : refused)++;
  }
  EXPECT_GT(accepted, 1000);
  EXPECT_GT(refused, 1000);
  EXPECT_GT(host->turn(), 20u) << "whole rounds, their steps included, are served between the refusals";
  std::printf("concurrent fuzz: host %d served, %d refused, %llu rounds ended\n", accepted, refused,
              (unsigned long long)host->turn() / 2);
}

}  // namespace
