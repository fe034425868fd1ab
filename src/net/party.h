// A deployed party (`pcmoe party`) and a local launcher of all of them (`pcmoe launch`).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "collab/transport.h"
#include "net/coordinator.h"
#include "net/grpc_transport.h"

namespace pcmoe::net {

struct PartyOptions {
  std::string config;     // the run config, with its deploy section
  int party = 0;          // this party's index
  std::string certs_dir;  // ca.pem, <name>.pem, <name>.key (unused with insecure)
  bool insecure = false;  // plaintext; loopback addresses only
  std::string out_dir;    // metrics.jsonl, report.json and checkpoint/ of this party
  bool resume = false;    // continue from out_dir/checkpoint
  int64_t until = -1;     // stop after this many rounds (>= 0), with a checkpoint
};

// Serves party `party`'s expert shard, joins the coordinator (party 0, which this process is
// when party == 0), trains on the turns handed to it with run_turn (the simulation's code),
// evaluates its model on its own validation data once everyone has trained, and writes
// out_dir/metrics.jsonl (one line per turn, as `pcmoe collab` writes them), out_dir/report.json
// and, with all parties every deploy.checkpoint_every rounds and at the end,
// out_dir/checkpoint/turn<t>/ (its backbone and its expert shard, each with AdamW state, and
// state.json: the turn and the config hash), from which --resume continues, at the latest turn
// every party holds, exactly as an unbroken run. With an audit section it records as
// docs/audit.md says. Throws on any failure, after asking the coordinator to stop the run.
// A federated deploy.mode runs run_fed_party (net/fed_deploy.h) instead.
nlohmann::json run_party(const PartyOptions& opts);

// Makes certificates into out_dir/certs (unless insecure), starts every party as a local
// process (`exe party ...`, logs in out_dir/party<i>.log, outputs in out_dir/party<i>/) and a
// separate federated server (`exe server ...`, out_dir/server.log, out_dir/server/), waits
// for all, merges their metrics into out_dir/metrics.jsonl and writes out_dir/report.json.
// Returns the report; "ok" is false if any process failed.
// With resume / until, every party is started with --resume / --until (certificates are reused).
nlohmann::json run_launch(const std::string& exe, const std::string& config, const std::string& out_dir, bool insecure,
                          bool resume, int64_t until);

// A report's traffic for party `me`: bytes sent and received, in all and per trained token, and
// one {kind, from, to, messages, bytes} per kind and pair.
nlohmann::json traffic_report(const TrafficStats& stats, int me, double tokens);

// After a failure: asks the coordinator to stop the run with `why`, gives the others (party 0)
// time to hear it, and shuts this process's server down. The caller rethrows.
void abandon_run(CoordinatorClient& coord, CoordinatorService* coordinator, GrpcTransport& net, const std::string& why);

}  // namespace pcmoe::net
