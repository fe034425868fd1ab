// `pcmoe audit`: what a curious participant can reconstruct from its recording of a finished run
// (docs/audit.md). The attacker knows the architecture, the shared start, its own view of the
// model at each recorded round (its backbone and the experts it can query) and public text (its
// own training documents: genres the victims do not hold); never the victims' data. truth.bin
// only scores its guesses.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "eval/probe.h"
#include "eval/secrets.h"

namespace pcmoe::eval {

struct AuditOptions {
  int public_windows = 128;   // windows of public text the attack models learn from
  ProbeConfig linear{0, 4, 256, 3e-3f, 1};
  ProbeConfig mlp{256, 4, 256, 1e-3f, 1};
  bool mlp_every_round = false;  // the MLP at every recorded round (default: the last; it costs 4x a probe)
  // Runs of the federated modes on the same parties and data (a `collab` run with an "audit"
  // section): their server attacks and released models join the report.
  std::vector<std::string> fed_runs;
  // Strings the victims want kept (eval/secrets.h): which of them the attacks rebuilt.
  std::vector<Secret> secrets;
};

// Runs every attack on run_dir's recording (run_dir/audit), writes out_dir/audit.json and
// prints the table; returns the JSON. Unless the run used DP-SGD (whose Poisson batches the
// scorer does not rebuild), also writes out_dir/sample_party<v>.txt per victim: SENSITIVE, it
// holds the victim's text. Throws std::runtime_error for a run without a recording,
// or a recording that does not belong to the run's config.
nlohmann::json run_audit(const std::string& run_dir, const std::string& out_dir, const AuditOptions& opt = {});

}  // namespace pcmoe::eval
