// The federated baselines as modes of `pcmoe collab`: fedavg (fp32), int8, topk-ef, cg-fedllm and
// fedavg-lora, on the same party data, batches and tokens per party as PC-MoE.
#pragma once
#include <map>
#include <string>

#include "collab/runner.h"

namespace pcmoe::fed {

// Runs one mode; its report: per party validation losses, bytes up (sent) and down (received)
// per trained token, planned memory, reconstruction cosine and SNR; the server's memory, the
// rounds, the codec's uplink bytes and, for cg-fedllm, TGAP's pre-training losses.
nlohmann::json run_fed_mode(CollabContext& ctx, const std::string& mode);

// The five modes, for run_collab's extra_modes.
std::map<std::string, ExtraMode> fed_modes();

}  // namespace pcmoe::fed
