// Test helpers around expert hosts: a session started at one party's turn, the message that
// opens a turn, a bitwise snapshot of a host's whole state, and a host driven beside a twin.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "collab/session.h"

namespace pcmoe::test {

// Party p's first turn of the schedule; every host of `s` starts there (the session begins
// mid-schedule, with that turn).
inline int64_t start_at_turn_of(PcMoeSession& s, uint64_t seed, int p) {
  const int64_t turn = next_turn_of(seed, s.n_parties(), p, 0, s.n_parties());
  s.start_at(turn);
  return turn;
}

// One message the transport carried: a request, or the response to one.
struct Crossing {
  MsgKind kind;
  int from, to;
  bool response;
  Bytes payload;
};
// Every message `net` carries from now on, in order, appended to `seen`.
inline void record_crossings(InProcessTransport& net, std::vector<Crossing>& seen) {
  net.set_tap([&seen](MsgKind k, int from, int to, bool resp, const Bytes& b) { seen.push_back({k, from, to, resp, b}); });
}

// A control request: the op, then its float arguments.
inline Bytes control(ControlOp op, std::initializer_list<float> floats = {}) {
  Writer w;
  w.u32(static_cast<uint32_t>(op));
  for (float f : floats) w.f32(f);
  return w.take();
}

inline Bytes begin_message(uint64_t turn) {
  Writer w;
  w.u32(static_cast<uint32_t>(ControlOp::kBeginTurn));
  w.u64(turn);
  return w.take();
}

// Opens party p's first turn at every host of `s`, as run_turn's first step does: the hosts then
// serve p's expert calls.
inline int64_t open_turn_of(PcMoeSession& s, Transport& net, uint64_t seed, int p) {
  const int64_t turn = start_at_turn_of(s, seed, p);
  for (int h = 0; h < s.n_parties(); ++h) net.call(p, h, MsgKind::kControl, begin_message((uint64_t)turn));
  return turn;
}

// Every weight, gradient, AdamW moment and step counter of a host (as bits), and where its turns
// stand; in concurrent rounds also every party's contribution beyond party 0's (the shard's own
// gradient block).
struct HostState {
  std::vector<uint32_t> values, grads, m, v;
  int64_t adam_steps;
  uint64_t turn;
  int holder;
  std::vector<std::vector<uint32_t>> slots;

  explicit HostState(const ExpertHost& h)
      : values(bits(h.params().values(), h.params().numel())), grads(bits(h.params().grads(), h.params().numel())),
        m(bits(h.optimizer().m(), h.params().numel())), v(bits(h.optimizer().v(), h.params().numel())),
        adam_steps(h.optimizer().steps_done()), turn(h.turn()), holder(h.holder()) {
    for (int p = 1; p < h.slots(); ++p) slots.push_back(bits(h.contribution(p).grads(), h.params().numel()));
  }

  static std::vector<uint32_t> bits(const float* p, size_t n) {
    std::vector<uint32_t> b(n);
    if (n) std::memcpy(b.data(), p, n * sizeof(float));
    return b;
  }
};

// "" when a and b are the same bit for bit, else the first thing that differs.
inline std::string first_difference(const HostState& a, const HostState& b) {
  const auto floats = [](const char* what, const std::vector<uint32_t>& x, const std::vector<uint32_t>& y) {
    for (size_t i = 0; i < x.size(); ++i)
      if (x[i] != y[i]) return std::string(what) + "[" + std::to_string(i) + "]";
    return std::string();
  };
  for (const std::string& d : {floats("value", a.values, b.values), floats("gradient", a.grads, b.grads),
                               floats("AdamW m", a.m, b.m), floats("AdamW v", a.v, b.v)})
    if (!d.empty()) return d;
  if (a.adam_steps != b.adam_steps) return "AdamW steps " + std::to_string(a.adam_steps) + " vs " + std::to_string(b.adam_steps);
  if (a.turn != b.turn) return "turn " + std::to_string(a.turn) + " vs " + std::to_string(b.turn);
  if (a.holder != b.holder) return "holder " + std::to_string(a.holder) + " vs " + std::to_string(b.holder);
  for (size_t p = 0; p < a.slots.size() && p < b.slots.size(); ++p)
    if (const std::string d = floats("contribution", a.slots[p], b.slots[p]); !d.empty())
      return "party " + std::to_string(p + 1) + "'s " + d;
  return "";
}

// Party 1's host and a twin that sees only the calls the host accepts: an accepted call answers
// alike on both; a refused one names the caller ("party 1 refused <kind> from party <from>") and
// `needle`, and leaves the host its twin's equal bit for bit.
struct HostTwins {
  std::unique_ptr<ExpertHost> host, twin;

  Bytes both(MsgKind kind, int from, const Bytes& request) {
    const Bytes reply = host->handle(kind, from, request);
    EXPECT_EQ(twin->handle(kind, from, request), reply);
    return reply;
  }
  void refused(MsgKind kind, int from, const Bytes& request, const std::string& needle) {
    try {
      host->handle(kind, from, request);
      ADD_FAILURE() << "accepted; expected: " << needle;
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("party 1 refused " + std::string(to_string(kind)) + " from party " + std::to_string(from)),
                std::string::npos)
          << what;
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
    EXPECT_EQ(first_difference(HostState(*host), HostState(*twin)), "") << needle;
  }
};

}  // namespace pcmoe::test
