// A deployment of PC-MoE as separate processes: the `deploy` section of a run config (party
// names and addresses, deadlines, message bound), the section hashes parties join with, and the
// protocol version of proto/pcmoe.proto.
#pragma once
#include <cstddef>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collab/run_config.h"

namespace pcmoe::net {

// Bump on any change to proto/pcmoe.proto or to the payload encodings of docs/protocol.md.
constexpr uint32_t kProtocolVersion = 7;  // 2: CallStream, collab.wire_dtype; 3: resume negotiation;
                                          // 4: FED_ROUND, FED_GLOBAL; 5: begin carries the turn;
                                          // 6: per-section join hashes, no loss in TurnDone;
                                          // 7: EXPERT_WEIGHTS, EXPERT_GRADS (collab.exchange)

struct PartyAddress {
  std::string name;     // the CN (and DNS name) of its certificate: [a-z0-9-], 1..63 characters;
                        // not a loopback name, an IP address or another party's address host
  std::string address;  // host:port it listens on and is reached at
};

struct DeployConfig {
  // Every process of the deployment, in index order: one per party, then, when a federated
  // server runs as a process of its own (fed_server "separate"), the server (index n_parties).
  std::vector<PartyAddress> parties;
  int n_parties = 0;                  // parties.n_parties of the run config
  // What the deployment trains: "pc-moe", or a federated mode of src/fed (fedavg, fedavg-lora,
  // int8, topk-ef, cg-fedllm).
  std::string mode = "pc-moe";
  // Where a federated mode's server runs: "party0" (in party 0's process) or "separate"
  // (`pcmoe server`, at the address of the config's deploy.server).
  std::string fed_server = "party0";
  double call_timeout_s = 60;         // deadline of every call (long polls add their wait)
  double join_timeout_s = 60;         // how long a party waits for all others to join
  double dead_after_s = 5;            // a joined party silent this long is presumed dead: the run stops
  // Every party checkpoints together every this many rounds (and at the end), so a failed run
  // resumes from the last round all of them completed; 0: at the end (or --until) only.
  int checkpoint_every = 10;
  // A call payload above chunk_bytes travels as a stream of chunks of at most chunk_bytes
  // (Party.CallStream), so no single message grows with the batch.
  size_t chunk_bytes = 4 << 20;
  size_t max_message_bytes = 0;       // bound of every message (0: chunk_bytes + 64 KiB)
  size_t max_payload_bytes = 0;       // bound of a whole call, streamed or not: the largest expert
                                      // call of the model config plus 64 KiB (not a config key)
};

// A run config plus its deploy section.
struct DeployRun {
  RunConfig run;
  DeployConfig deploy;
};

// Reads a config file whose optional `deploy` section is
//   {"parties": [{"name": "party0", "address": "127.0.0.1:50051"}, ...],
//    "call_timeout_s": 60, "join_timeout_s": 60, "dead_after_s": 5, "checkpoint_every": 10,
//    "chunk_bytes": 4194304, "max_message_bytes": 0, "mode": "pc-moe", "fed_server": "party0",
//    "server": {"name": "server", "address": "127.0.0.1:50050"}}
// Without parties, party i is "party<i>" at 127.0.0.1:<50051 + i>; "server" is required with
// fed_server "separate" and refused otherwise. The other sections are read as load_run_config
// reads them (a federated mode's fed section is checked as collab checks it); errors name the
// file.
DeployRun load_deploy_run(const std::string& path);
DeployConfig deploy_config_from_json(const nlohmann::json& j, const RunConfig& run);

// The largest call payload a run of this config sends (an expert call of a whole micro-batch's
// routed rows to one host, or one expert's weights or gradient sum, in fp32), plus headroom for
// control messages.
size_t max_payload_bytes(const RunConfig& run);

// What every process of a deployment must agree on: one SHA-256 (hex) per section of the config,
// of its canonical JSON: model, train, data (less cache_dir, a local cache, and the tokenizer's
// path), tokenizer (the shared tokenizer file's bytes; of nothing when the tokenizer is trained
// from the data, which the data and parties sections then fix), parties, collab (less modes,
// which only `pcmoe collab` runs), fed, privacy, audit, and deploy (every process's name and
// address, mode, fed_server, dead_after_s, checkpoint_every, chunk_bytes, max_message_bytes; not
// call_timeout_s and join_timeout_s, each process's own patience). Throws if the tokenizer file
// cannot be read.
using SectionHashes = std::map<std::string, std::string>;
SectionHashes section_hashes(const DeployRun& dr);
// One SHA-256 of all of them but deploy: what a checkpoint records of the config that trained it
// (a resumed run may move a party to another address or checkpoint at another interval).
std::string config_hash(SectionHashes sections);
// The sections in which `theirs` differs from `ours` (or that one side lacks), each with the first
// 12 hex digits of both hashes ("data (party1 0a1b..., coordinator 2c3d...)"), "; "-separated;
// empty when they agree.
std::string differing_sections(const SectionHashes& ours, const SectionHashes& theirs, const std::string& our_name,
                               const std::string& their_name);

bool is_federated(const DeployConfig& c);
// The server's index in `parties` and on the transport: party 0's process, or the separate server.
int fed_server_index(const DeployConfig& c);

// The host part of "host:port" ("[::1]:5" -> "::1"); throws on an address without a port.
std::string address_host(const std::string& address);
bool is_loopback_host(const std::string& host);

}  // namespace pcmoe::net
