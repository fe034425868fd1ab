#include "collab/transport.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace pcmoe {

const char* to_string(MsgKind k) {
  switch (k) {
    case MsgKind::kExpertForward: return "expert_forward";
    case MsgKind::kExpertBackward: return "expert_backward";
    case MsgKind::kControl: return "control";
    case MsgKind::kExpertBackwardUnits: return "expert_backward_units";
    case MsgKind::kFedRound: return "fed_round";
    case MsgKind::kFedGlobal: return "fed_global";
    case MsgKind::kExpertWeights: return "expert_weights";
    case MsgKind::kExpertGrads: return "expert_grads";
  }
  return "unknown";
}

void TrafficStats::add(MsgKind k, int from, int to, size_t bytes) {
  TrafficCount& c = by_kind_pair[{k, from, to}];
  c.messages += 1;
  c.bytes += bytes;
}

uint64_t TrafficStats::bytes_sent(int party) const {
  uint64_t s = 0;
  for (const auto& [key, c] : by_kind_pair)
    if (std::get<1>(key) == party) s += c.bytes;
  return s;
}

uint64_t TrafficStats::bytes_received(int party) const {
  uint64_t s = 0;
  for (const auto& [key, c] : by_kind_pair)
    if (std::get<2>(key) == party) s += c.bytes;
  return s;
}

uint64_t TrafficStats::total_bytes() const {
  uint64_t s = 0;
  for (const auto& [key, c] : by_kind_pair) s += c.bytes;
  return s;
}

void InProcessTransport::serve(int party, Handler handler) { handlers_[party] = std::move(handler); }

Bytes InProcessTransport::call(int from, int to, MsgKind kind, const Bytes& request) {
  auto it = handlers_.find(to);
  if (it == handlers_.end()) throw std::runtime_error("no party " + std::to_string(to) + " on the transport");
  if (from == to) return it->second(kind, from, request);
  const Bytes delivered(request);  // the copy a network would make
  count(kind, from, to, false, delivered);
  Bytes response = it->second(kind, from, delivered);
  count(kind, to, from, true, response);
  return Bytes(response);
}

void InProcessTransport::count(MsgKind kind, int from, int to, bool is_response, const Bytes& payload) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.add(kind, from, to, payload.size());
  if (tap_) tap_(kind, from, to, is_response, payload);
  largest_ = std::max(largest_, payload.size());
}

namespace {
template <class T>
void put(Bytes& b, T v) {
  const size_t at = b.size();
  b.resize(at + sizeof(T));
  std::memcpy(b.data() + at, &v, sizeof(T));  // x86-64 and aarch64 are little-endian
}
}  // namespace

void Writer::u32(uint32_t v) { put(buf_, v); }
void Writer::f32(float v) { put(buf_, v); }
void Writer::f64(double v) { put(buf_, v); }
void Writer::u64(uint64_t v) { put(buf_, v); }
void Writer::floats(const float* p, size_t n) {
  const size_t at = buf_.size();
  buf_.resize(at + n * sizeof(float));
  if (n) std::memcpy(buf_.data() + at, p, n * sizeof(float));
}

void Reader::need(size_t n) const {
  if (b_.size() - pos_ < n)
    throw std::runtime_error("truncated message: needs " + std::to_string(pos_ + n) + " bytes, has " +
                             std::to_string(b_.size()));
}
template <class T>
T Reader::get() {
  need(sizeof(T));
  T v;
  std::memcpy(&v, b_.data() + pos_, sizeof(T));
  pos_ += sizeof(T);
  return v;
}
uint32_t Reader::u32() { return get<uint32_t>(); }
float Reader::f32() { return get<float>(); }
double Reader::f64() { return get<double>(); }
uint64_t Reader::u64() { return get<uint64_t>(); }
void Reader::floats(float* p, size_t n) {
  need(n * sizeof(float));
  if (n) std::memcpy(p, b_.data() + pos_, n * sizeof(float));
  pos_ += n * sizeof(float);
}
void Reader::expect_end() const {
  if (pos_ != b_.size())
    throw std::runtime_error("message has " + std::to_string(b_.size() - pos_) + " unexpected trailing bytes");
}

}  // namespace pcmoe
