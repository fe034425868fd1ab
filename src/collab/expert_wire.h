// The expert-call messages (formats in remote_experts.h), written and read in one place: by the
// party that sends them, by the host that serves them, and by the leakage audit, which reads a
// curious host's recordings exactly as the host read them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "collab/transport.h"
#include "model/config.h"
#include "tensor/dtype.h"

namespace pcmoe {

// How the float rows of expert calls (hidden states, output gradients, and the replies) travel:
// `collab.wire_dtype`, a dtype of the table in tensor/dtype.h. Hosts and parties compute in their
// compute dtype; the wire may be narrower.
using WireDtype = Dtype;
// "fp32" | "bf16" | "fp16"; anything else throws, naming the choices.
WireDtype parse_wire_dtype(const std::string& name);
inline size_t wire_float_bytes(WireDtype d) { return dtype_traits(d).size; }

// n floats in `dtype` at dst (n * wire_float_bytes bytes), little-endian. A finite value that
// would become ±inf (fp16 beyond ±65504, bf16 beyond ±3.39e38) throws: a run would otherwise go
// on with infinities and NaN losses; bf16 (fp32's range) is the remedy for fp16 overflow.
void put_rows(WireDtype dtype, const float* src, size_t n, std::byte* dst);
// Reads what put_rows wrote; throws on NaN or ±inf, which no peer's state may receive.
void get_rows(WireDtype dtype, const std::byte* src, size_t n, float* dst);

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
// (offsets over all experts), rows in `dtype`; `unit` (per row) and n_units for
// kExpertBackwardUnits, which is fp32 only (DP-SGD's per-unit norms: docs/privacy.md).
Bytes encode_expert_request(MsgKind kind, const ModelConfig& cfg, int layer, const std::vector<int>& hosted,
                            const int* offsets, const float* in, const int* unit = nullptr, int n_units = 0,
                            WireDtype dtype = WireDtype::kF32);

// Reads a request to the host holding `hosted` into `out` (its buffers are reused; rows back in
// fp32). Throws std::runtime_error on a malformed one: a layer that is not MoE, another expert
// count, more rows than `max_rows`, units out of range or not ascending within an expert, wrong
// length for `dtype`, a row value that is not finite.
void decode_expert_request(MsgKind kind, const Bytes& request, const ModelConfig& cfg,
                           const std::vector<int>& hosted, int max_rows, ExpertRequest& out,
                           WireDtype dtype = WireDtype::kF32);

// The host's reply: n_floats result rows in `dtype`, then (kExpertBackwardUnits) n_units f64.
Bytes encode_expert_reply(const float* rows, size_t n_floats, const double* unit_sq, int n_units, WireDtype dtype);
// Reads a reply into the grouped rows of `out` (the hosted experts' ranges of `offsets`) and adds
// the units' squared norms to unit_sq (when n_units > 0). Throws on a wrong length, a row value
// that is not finite or a norm that is not finite and >= 0 (unit_sq is then unchanged).
void decode_expert_reply(const Bytes& reply, const ModelConfig& cfg, const std::vector<int>& hosted, const int* offsets,
                         float* out, double* unit_sq, int n_units, WireDtype dtype);

}  // namespace pcmoe
