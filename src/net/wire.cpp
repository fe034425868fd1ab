#include "net/wire.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>

namespace pcmoe::net::wire {
namespace {

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += char((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += char(v);
}

// Field visitors: each message lists (number, member) once, for encoding and decoding alike.
template <class F> void fields(CallRequest& m, F&& f) { f(1, m.kind); f(2, m.from); f(3, m.step); f(4, m.payload); }
template <class F> void fields(CallReply& m, F&& f) { f(1, m.payload); }
template <class F> void fields(CallChunk& m, F&& f) { f(1, m.kind); f(2, m.from); f(3, m.step); f(4, m.total_bytes); f(5, m.seq); f(6, m.data); }
template <class F> void fields(JoinRequest& m, F&& f) { f(1, m.party); f(2, m.protocol_version); f(4, m.wait_ms); f(5, m.first_turn); f(6, m.end_turn); f(7, m.fallback_turn); f(8, m.sections); }
template <class F> void fields(JoinReply& m, F&& f) { f(1, m.poll); f(2, m.reason); f(3, m.first_turn); }
template <class F> void fields(TurnRequest& m, F&& f) { f(1, m.party); f(2, m.wait_ms); }
template <class F> void fields(TurnReply& m, F&& f) { f(1, m.poll); f(2, m.done); f(3, m.turn); f(4, m.round); f(5, m.reason); }
template <class F> void fields(TurnDoneRequest& m, F&& f) { f(1, m.party); f(2, m.turn); }
template <class F> void fields(BarrierRequest& m, F&& f) { f(1, m.party); f(2, m.name); f(3, m.wait_ms); }
template <class F> void fields(BarrierReply& m, F&& f) { f(1, m.poll); f(2, m.reason); }
template <class F> void fields(StopRequest& m, F&& f) { f(1, m.party); f(2, m.reason); }
template <class F> void fields(Ack&, F&&) {}
template <class F> void fields(HeartbeatRequest& m, F&& f) { f(1, m.party); }
template <class F> void fields(HeartbeatReply& m, F&& f) { f(1, m.poll); f(2, m.reason); }
// A map<string, string> travels as repeated entries of this message, as protobuf's maps do.
struct MapEntry {
  std::string key, value;
};
template <class F> void fields(MapEntry& m, F&& f) { f(1, m.key); f(2, m.value); }
using StringMap = std::map<std::string, std::string>;

template <class T>
constexpr int wire_type() {
  if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, StringMap>) return 2;
  else if constexpr (std::is_same_v<T, double>) return 1;
  else return 0;
}

template <class M>
std::string encode_message(M m) {
  std::string out;
  fields(m, [&out](int number, const auto& v) {
    using T = std::decay_t<decltype(v)>;
    if constexpr (std::is_same_v<T, StringMap>) {
      for (const auto& [key, value] : v) {
        const std::string entry = encode_message(MapEntry{key, value});
        put_varint(out, (uint64_t)number << 3 | 2);
        put_varint(out, entry.size());
        out += entry;
      }
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (v.empty()) return;  // proto3: defaults are not written
      put_varint(out, (uint64_t)number << 3 | 2);
      put_varint(out, v.size());
      out += v;
    } else if constexpr (std::is_same_v<T, double>) {
      if (v == 0) return;
      put_varint(out, (uint64_t)number << 3 | 1);
      char b[8];
      std::memcpy(b, &v, 8);  // little-endian, as protobuf's fixed64
      out.append(b, 8);
    } else {
      if (v == 0) return;
      put_varint(out, (uint64_t)number << 3);
      put_varint(out, (uint64_t)v);
    }
  });
  return out;
}

struct Cursor {
  const std::string& s;
  size_t pos = 0;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos >= s.size()) throw std::runtime_error("truncated varint");
      const uint8_t b = (uint8_t)s[pos++];
      if (shift == 63 && b > 1) throw std::runtime_error("varint overflows 64 bits");
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw std::runtime_error("varint longer than 10 bytes");
  }
  std::string take(uint64_t n) {
    if (n > s.size() - pos) throw std::runtime_error("field of " + std::to_string(n) + " bytes runs past the message end");
    std::string out = s.substr(pos, n);
    pos += n;
    return out;
  }
};

template <class M>
void decode_message(const std::string& bytes, M& m, const char* name) {
  m = M{};
  Cursor c{bytes};
  try {
    while (c.pos < bytes.size()) {
      const uint64_t tag = c.varint();
      const uint64_t number = tag >> 3;
      const int type = int(tag & 7);
      if (number == 0 || number > 536870911) throw std::runtime_error("invalid field number");
      bool known = false;
      fields(m, [&](int n, auto& v) {
        using T = std::decay_t<decltype(v)>;
        if ((uint64_t)n != number) return;
        known = true;
        if (type != wire_type<T>())
          throw std::runtime_error("field " + std::to_string(n) + " has wire type " + std::to_string(type) + ", expected " +
                                   std::to_string(wire_type<T>()));
        if constexpr (std::is_same_v<T, StringMap>) {
          MapEntry e;
          decode_message(c.take(c.varint()), e, "map entry");
          v[e.key] = e.value;
        } else if constexpr (std::is_same_v<T, std::string>) {
          v = c.take(c.varint());
        } else if constexpr (std::is_same_v<T, double>) {
          const std::string b = c.take(8);
          std::memcpy(&v, b.data(), 8);
        } else if constexpr (std::is_same_v<T, bool>) {
          v = c.varint() != 0;
        } else {
          const uint64_t x = c.varint();
          if (x > std::numeric_limits<T>::max()) throw std::runtime_error("field " + std::to_string(n) + " out of range");
          v = (T)x;
        }
      });
      if (known) continue;
      switch (type) {  // skip an unknown field
        case 0: c.varint(); break;
        case 1: c.take(8); break;
        case 2: c.take(c.varint()); break;
        case 5: c.take(4); break;
        default: throw std::runtime_error("unsupported wire type " + std::to_string(type));
      }
    }
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(std::string("malformed ") + name + ": " + e.what());
  }
}

}  // namespace

#define PCMOE_WIRE_MESSAGE(M)                                                   \
  std::string encode(const M& m) { return encode_message(m); }                 \
  void decode(const std::string& bytes, M& m) { decode_message(bytes, m, #M); }
PCMOE_WIRE_MESSAGE(CallRequest)
PCMOE_WIRE_MESSAGE(CallReply)
PCMOE_WIRE_MESSAGE(CallChunk)
PCMOE_WIRE_MESSAGE(JoinRequest)
PCMOE_WIRE_MESSAGE(JoinReply)
PCMOE_WIRE_MESSAGE(TurnRequest)
PCMOE_WIRE_MESSAGE(TurnReply)
PCMOE_WIRE_MESSAGE(TurnDoneRequest)
PCMOE_WIRE_MESSAGE(BarrierRequest)
PCMOE_WIRE_MESSAGE(BarrierReply)
PCMOE_WIRE_MESSAGE(StopRequest)
PCMOE_WIRE_MESSAGE(Ack)
PCMOE_WIRE_MESSAGE(HeartbeatRequest)
PCMOE_WIRE_MESSAGE(HeartbeatReply)
#undef PCMOE_WIRE_MESSAGE

}  // namespace pcmoe::net::wire
