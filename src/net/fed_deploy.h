// A federated mode (deploy.mode fedavg, fedavg-lora, int8, topk-ef or cg-fedllm) deployed as
// processes. Each party serves its FedParty (src/fed/fedavg.h) for FED_ROUND calls over its
// GrpcTransport; the server (deploy.fed_server: in party 0's process, or `pcmoe server`, a
// process that joins like a party) runs FedServer's rounds exactly as `pcmoe collab` does, then
// sends every party the final global model (FED_GLOBAL), which each evaluates on its own
// validation data. Party 0 coordinates: join (section hashes), barriers "trained" and "finished",
// stop, heartbeats, as in a PC-MoE deployment.
#pragma once
#include <nlohmann/json.hpp>

#include "net/deploy.h"
#include "net/party.h"

namespace pcmoe::net {

// Party opts.party of the federated deployment `dr` (run_party hands it over). Writes
// out_dir/metrics.jsonl (one line per round, as collab's federated lines) and
// out_dir/report.json: validation loss on its own data, bytes sent and received per trained
// token, reconstruction quality, planned memory and peak RSS; party 0 hosting the server adds
// the server's report under "server" (its traffic is then party 0's).
nlohmann::json run_fed_party(const PartyOptions& opts, const DeployRun& dr);

// The separate server (`pcmoe server`; opts.party is unused): TGAP for cg-fedllm, the rounds,
// the final model to every party. Writes out_dir/report.json (the run's facts, bytes per
// trained token of all parties, memory, peak RSS) and, for cg-fedllm,
// out_dir/cg-fedllm/autoencoder.safetensors.
nlohmann::json run_fed_server(const PartyOptions& opts);

}  // namespace pcmoe::net
