// A deployed party (`pcmoe party`) and a local launcher of all of them (`pcmoe launch`).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "collab/transport.h"

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
// out_dir/metrics.jsonl (one line per turn, as `pcmoe collab` writes them; appended to on
// resume), out_dir/report.json and out_dir/checkpoint/ (its backbone and its expert shard,
// each with AdamW state, and state.json: the next turn and the config hash), from which
// --resume continues exactly as an unbroken run. Throws on any failure, after asking the
// coordinator to stop the run.
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

// A report's traffic: one {kind, from, to, messages, bytes} per kind and pair.
nlohmann::json traffic_json(const TrafficStats& stats);

}  // namespace pcmoe::net
