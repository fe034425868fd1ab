// Every byte that crosses a party boundary goes through a Transport, which counts it. Calls are
// request/response between two parties; a party's calls to itself do not cross a boundary and
// are neither copied nor counted.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace pcmoe {

using Bytes = std::vector<std::byte>;

// What a message carries. The first three are exactly what PC-MoE lets cross a boundary.
enum class MsgKind : uint8_t {
  kExpertForward = 1,   // request: routed hidden states; response: expert outputs
  kExpertBackward = 2,  // request: gradients of expert outputs; response: gradients of inputs
  kControl = 3,         // step bookkeeping: gradient-norm contributions, optimizer step orders,
                        // DP-SGD clip factors
  kExpertBackwardUnits = 4,  // DP-SGD pass 1. request: output gradients with each row's privacy
                             // unit (an index in the batch); response: input gradients and each
                             // unit's squared gradient norm at the host's experts
  kFedRound = 5,        // federated baselines only (src/fed/): request: the global model
                        // (server to party); response: the party's encoded update
  kFedGlobal = 6,       // federated deployment only: request: the final global model (server to
                        // party, after the last round, for the party's own evaluation); response:
                        // empty. The simulation evaluates the global model without sending it.
  // collab.exchange "weights" (src/collab/weights_turn.h): the data owner runs every expert itself
  kExpertWeights = 7,   // request: layer, expert; response: that expert's weights
  kExpertGrads = 8,     // request: layer, expert, the turn's gradient sum of its weights; response: empty
};
const char* to_string(MsgKind k);

struct TrafficCount {
  uint64_t messages = 0;
  uint64_t bytes = 0;
};

// Counts per (kind, from, to); a request and its response are counted in their own direction.
struct TrafficStats {
  std::map<std::tuple<MsgKind, int, int>, TrafficCount> by_kind_pair;
  void add(MsgKind k, int from, int to, size_t bytes);
  uint64_t bytes_sent(int party) const;
  uint64_t bytes_received(int party) const;
  uint64_t total_bytes() const;
};

// A party's handler for incoming calls: (kind, caller, request) -> response.
using Handler = std::function<Bytes(MsgKind kind, int from, const Bytes& request)>;

// Observes every payload that crosses a boundary (tests; later the recording tap of audits).
using Tap = std::function<void(MsgKind kind, int from, int to, bool is_response, const Bytes& payload)>;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual void serve(int party, Handler handler) = 0;
  virtual Bytes call(int from, int to, MsgKind kind, const Bytes& request) = 0;
  const TrafficStats& stats() const { return stats_; }
  void set_tap(Tap tap) { tap_ = std::move(tap); }

 protected:
  TrafficStats stats_;
  Tap tap_;
};

// All parties in one process. Payloads are copied across the boundary, as a network would, so
// no party can reach another's memory through a shared pointer. Calls may come from several
// threads at once (concurrent rounds: one per party): the counts and the tap are taken under a
// lock, the handlers run outside it (serve() before the calls start).
class InProcessTransport final : public Transport {
 public:
  void serve(int party, Handler handler) override;
  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override;
  size_t largest_payload() const { return largest_; }

 private:
  void count(MsgKind kind, int from, int to, bool is_response, const Bytes& payload);
  std::map<int, Handler> handlers_;
  size_t largest_ = 0;
  std::mutex mu_;
};

// Little-endian wire encoding helpers for fixed-layout messages.
class Writer {
 public:
  void u32(uint32_t v);
  void f32(float v);
  void f64(double v);
  void u64(uint64_t v);
  void floats(const float* p, size_t n);
  Bytes take() { return std::move(buf_); }

 private:
  Bytes buf_;
};

// Reads what a Writer wrote; throws std::runtime_error on a truncated or overlong message.
class Reader {
 public:
  explicit Reader(const Bytes& b) : b_(b) {}
  explicit Reader(Bytes&&) = delete;  // would dangle: keep the message in a named variable
  uint32_t u32();
  float f32();
  double f64();
  uint64_t u64();
  void floats(float* p, size_t n);
  void expect_end() const;

 private:
  void need(size_t n) const;
  template <class T>
  T get();
  const Bytes& b_;
  size_t pos_ = 0;
};

}  // namespace pcmoe
