// The expert-call messages (formats in remote_experts.h), written and read in one place: by the
// party that sends them, by the host that serves them, and by the leakage audit, which reads a
// curious host's recordings exactly as the host read them.
#pragma once
#include <vector>

#include "collab/transport.h"
#include "model/config.h"

namespace pcmoe {

// One expert call as a host receives it.
struct ExpertRequest {
  int layer = -1;
  std::vector<int> offsets;  // n_experts + 1 row offsets over all experts; rows only for hosted ones
  int n_units = 0;           // kExpertBackwardUnits only: the units named
  std::vector<int> units;    // kExpertBackwardUnits only: each row's unit
  std::vector<float> rows;   // offsets.back() x d_model: hidden states (forward) or output gradients
  int n_rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

// Writes the request for the host holding `hosted` (ascending) from the grouped rows of `in`
// (offsets over all experts); `unit` (per row) and n_units for kExpertBackwardUnits.
Bytes encode_expert_request(MsgKind kind, const ModelConfig& cfg, int layer, const std::vector<int>& hosted,
                            const int* offsets, const float* in, const int* unit = nullptr, int n_units = 0);

// Reads a request to the host holding `hosted` into `out` (its buffers are reused). Throws
// std::runtime_error on a malformed one: a layer that is not MoE, another expert count, more
// rows than `max_rows`, units out of range or not ascending within an expert, wrong length.
void decode_expert_request(MsgKind kind, const Bytes& request, const ModelConfig& cfg,
                           const std::vector<int>& hosted, int max_rows, ExpertRequest& out);

}  // namespace pcmoe
