// The messages of proto/pcmoe.proto in the protobuf wire format, encoded and decoded here rather
// than by protoc-generated classes: Debian's libsentencepiece carries its own copy of protobuf
// and exports its symbols, so a process holding both it and libprotobuf crashes at start-up.
// The field numbers and types below are exactly the .proto's; `protoc --decode` reads what
// encode() writes (tests/net/test_net.cpp checks it), so any protobuf peer can speak to pcmoe.
//
// Decoding is strict: a truncated varint or field, a wrong wire type for a known field, a
// field number 0, or a value that does not fit its field throws std::runtime_error. Unknown
// fields are skipped, as protobuf does; a map entry whose key repeats replaces the earlier one,
// as protobuf's does.
#pragma once
#include <cstdint>
#include <map>
#include <string>

namespace pcmoe::net::wire {

enum Kind : uint32_t {
  KIND_UNSPECIFIED = 0,
  EXPERT_FORWARD = 1,
  EXPERT_BACKWARD = 2,
  CONTROL = 3,
  FED_ROUND = 5,
  FED_GLOBAL = 6,
  EXPERT_WEIGHTS = 7,
  EXPERT_GRADS = 8
};
// A kind a Call may carry (the host's handler still refuses what its mode does not serve).
inline bool known_kind(uint32_t k) {
  return k == EXPERT_FORWARD || k == EXPERT_BACKWARD || k == CONTROL || k == FED_ROUND || k == FED_GLOBAL ||
         k == EXPERT_WEIGHTS || k == EXPERT_GRADS;
}
enum Poll : uint32_t { POLL_UNSPECIFIED = 0, READY = 1, WAIT = 2, STOPPED = 3 };

struct CallRequest {
  uint32_t kind = 0;  // 1
  uint32_t from = 0;  // 2
  uint64_t step = 0;  // 3
  std::string payload;  // 4
};
struct CallReply {
  std::string payload;  // 1
};
struct CallChunk {
  uint32_t kind = 0;         // 1
  uint32_t from = 0;         // 2
  uint64_t step = 0;         // 3
  uint64_t total_bytes = 0;  // 4
  uint32_t seq = 0;          // 5
  std::string data;          // 6
};
struct JoinRequest {
  uint32_t party = 0;             // 1
  uint32_t protocol_version = 0;  // 2
  uint32_t wait_ms = 0;           // 4
  uint64_t first_turn = 0;        // 5
  uint64_t end_turn = 0;          // 6
  uint64_t fallback_turn = 0;     // 7
  std::map<std::string, std::string> sections;  // 8: config section -> SHA-256 (hex)
};
struct JoinReply {
  uint32_t poll = 0;        // 1
  std::string reason;       // 2
  uint64_t first_turn = 0;  // 3
};
struct TurnRequest {
  uint32_t party = 0;    // 1
  uint32_t wait_ms = 0;  // 2
};
struct TurnReply {
  uint32_t poll = 0;   // 1
  bool done = false;   // 2
  uint64_t turn = 0;   // 3
  uint64_t round = 0;  // 4
  std::string reason;  // 5
};
struct TurnDoneRequest {
  uint32_t party = 0;  // 1
  uint64_t turn = 0;   // 2
};
struct BarrierRequest {
  uint32_t party = 0;    // 1
  std::string name;      // 2
  uint32_t wait_ms = 0;  // 3
};
struct BarrierReply {
  uint32_t poll = 0;   // 1
  std::string reason;  // 2
};
struct StopRequest {
  uint32_t party = 0;  // 1
  std::string reason;  // 2
};
struct Ack {};
struct HeartbeatRequest {
  uint32_t party = 0;  // 1
};
struct HeartbeatReply {
  uint32_t poll = 0;   // 1
  std::string reason;  // 2
};

#define PCMOE_WIRE_MESSAGE(M)      \
  std::string encode(const M& m); \
  void decode(const std::string& bytes, M& m);
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

// Full method names of the services.
inline constexpr const char* kPartyCall = "/pcmoe.wire.Party/Call";
inline constexpr const char* kPartyCallStream = "/pcmoe.wire.Party/CallStream";
inline constexpr const char* kJoin = "/pcmoe.wire.Coordinator/Join";
inline constexpr const char* kNextTurn = "/pcmoe.wire.Coordinator/NextTurn";
inline constexpr const char* kTurnDone = "/pcmoe.wire.Coordinator/TurnDone";
inline constexpr const char* kBarrier = "/pcmoe.wire.Coordinator/Barrier";
inline constexpr const char* kStop = "/pcmoe.wire.Coordinator/Stop";
inline constexpr const char* kHeartbeat = "/pcmoe.wire.Coordinator/Heartbeat";

}  // namespace pcmoe::net::wire
