// The recording tap of the leakage audit (docs/audit.md): a curious participant keeps every
// payload it legitimately receives in the recorded rounds — the requests addressed to it and the
// responses to its own calls — byte for byte, with the message kind, the sender and the round
// (public: the seeded schedule is known to every party). It sees nothing the honest protocol
// does not hand it: it is a Transport tap filtered on the receiver.
//
// recording.bin (little-endian): "PCMOEREC", u32 version 1, u32 observer, u32 n_parties,
// u32 length + the run's config fingerprint; then records until the end of the file:
// u8 kind, u8 is_response, u16 0, u32 from, i64 round, u64 length, the payload.
//
// truth.bin is the scorer's, never the attacker's: for each recorded expert call sent by a party
// (forward and backward requests), the tokens of its rows, so an audit can score a guess:
// "PCMOETRU", u32 version 1; then u64 record index, u32 rows, rows x (i32 input token,
// i32 target token, i32 row of the token in the sender's batch).
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "collab/run_config.h"
#include "collab/transport.h"
#include "model/model.h"

namespace pcmoe {

// SHA-256 (hex) of the run's whole config as JSON (as its checkpoints store it): recordings are
// read only against their own run. The JSON form keeps a recording readable by a later pcmoe
// whose config has gained keys.
std::string run_fingerprint(const nlohmann::json& config);

// Whether round `round` of `rounds` is recorded under `audit` (rounds 0, r, 2r, ... and the last).
bool recorded_round(const AuditConfig& audit, int64_t rounds, int64_t round);

// The truth of an expert request that `sender`'s last forward produced for host `host`: each
// row's (input token, target token, batch row), in the request's row order.
std::vector<int32_t> expert_call_truth(const Model& sender, const Bytes& request, int host, int n_parties);

class Recorder {
 public:
  // For a recorded expert request (kind, from, payload): its rows' (input, target, batch row)
  // triples. The simulation answers from the sender's model; an audit never sees it.
  using Oracle = std::function<std::vector<int32_t>(MsgKind kind, int from, const Bytes& payload)>;

  Recorder(const std::string& dir, int observer, int n_parties, const std::string& fingerprint, Oracle oracle = {});
  ~Recorder();
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;

  // The round now running, and whether it is recorded (holding: another round writes what the
  // last one held first).
  void set_round(int64_t round, bool record) {
    if (round != round_) flush();
    round_ = round;
    recording_ = record;
  }
  // To install with Transport::set_tap (whose calls to it must not overlap; both transports
  // serialise their taps).
  Tap tap();
  // Concurrent rounds: every party's calls arrive at once, so what the observer receives in a
  // round is held, each payload under the party whose turn sent or asked for it, until flush()
  // (or the next round) writes it in party order, each party's in the order it came: the
  // recording does not depend on timing.
  void hold_until_flush() { holding_ = true; }
  void flush();
  int64_t records() const { return n_records_; }
  uint64_t bytes() const { return bytes_; }

 private:
  struct Held {
    MsgKind kind;
    bool is_response;
    int from;
    Bytes payload;
    std::vector<int32_t> truth;
    bool has_truth;
  };
  void take(MsgKind kind, int from, int to, bool is_response, const Bytes& payload);
  void write(const Held& h);
  bool holding_ = false;
  std::map<int, std::vector<Held>> held_;  // by the party whose turn it belongs to
  int observer_;
  Oracle oracle_;
  std::FILE* rec_ = nullptr;
  std::FILE* truth_ = nullptr;
  int64_t round_ = 0;
  bool recording_ = false;
  int64_t n_records_ = 0;
  uint64_t bytes_ = 0;
};

// A deployment's share of truth.bin. The observer's process cannot know the tokens of what it
// receives, so each party that sends expert requests to the observer in recorded rounds keeps
// their truth itself, in dir/sent_truth.bin: "PCMOESNT", u32 version 1; then records of i64
// round, u8 kind, u32 rows, rows x (i32 input token, i32 target token, i32 batch row), in the
// order it sent them. Only the scorer joins them to the recording
// (gather_deployed_recording).
class SentTruthWriter {
 public:
  explicit SentTruthWriter(const std::string& dir);
  ~SentTruthWriter();
  SentTruthWriter(const SentTruthWriter&) = delete;
  SentTruthWriter& operator=(const SentTruthWriter&) = delete;
  void add(int64_t round, MsgKind kind, const std::vector<int32_t>& truth);

 private:
  std::FILE* f_ = nullptr;
};

// Whether a payload of this kind and direction is an expert request (it has truth).
bool is_expert_request(MsgKind kind, bool is_response);

// Gives a deployed run (run_dir/party<i>/audit/ of every party, as `pcmoe launch` leaves them or
// as gathered from the hosts) the audit directory a simulation leaves, run_dir/audit/:
// recording.bin (the observer's, as it recorded it), truth.bin (every sender's sent_truth.bin
// joined to the observer's records in order) and view_r<round> (the observer's backbone with
// every party's expert shard, saved by all parties together at the round's start: the experts
// the observer could query then). Throws, naming the part, when one is missing or the parts
// do not agree.
void gather_deployed_recording(const std::string& run_dir);

struct Record {
  MsgKind kind;
  bool is_response;
  int from;
  int64_t round;
  Bytes payload;
  std::vector<int32_t> truth;  // (input, target, batch row) per row; empty unless an expert request
};

struct Recording {
  int observer = 0;
  int n_parties = 0;
  std::string fingerprint;
  std::vector<Record> records;
};

// Reads dir/recording.bin and dir/truth.bin; throws std::runtime_error on a missing, truncated or
// corrupt file, naming it.
Recording read_recording(const std::string& dir);

}  // namespace pcmoe
