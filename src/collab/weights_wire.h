// The messages of collab.exchange "weights" (src/collab/weights_turn.h), written and read in one
// place: by the data owner, by the expert host and by whoever audits a host's recordings.
//
// Wire format (little-endian):
//   kExpertWeights request : u32 layer, u32 expert (one the host holds)
//                  response: that expert's w1 [d_ff, d_model], w3 [d_ff, d_model], w2 [d_model, d_ff],
//                            3 x d_ff x d_model floats in the wire dtype
//   kExpertGrads   request : u32 layer, u32 expert, then the gradient sums of w1, w3, w2 over the
//                            turn (the same layout and dtype); under DP-SGD clipped and noised
//                  response: empty
// The floats are f32 or bf16 (collab.wire_dtype); both sides compute in fp32.
#pragma once
#include <string>
#include <vector>

#include "collab/expert_wire.h"
#include "collab/transport.h"
#include "model/config.h"

namespace pcmoe {

// What crosses a party boundary in a PC-MoE turn (collab.exchange, docs/protocol.md).
enum class Exchange : uint8_t { kActivations = 0, kWeights = 1 };
// "activations" | "weights"; anything else throws, naming the choices.
Exchange parse_exchange(const std::string& name);

// The floats of one expert's weights (or their gradients): w1, w3, w2 back to back.
inline size_t expert_floats(const ModelConfig& cfg) { return 3 * (size_t)cfg.d_ff * cfg.d_model; }

struct ExpertRef {
  int layer = -1, expert = -1;
};

Bytes encode_weights_request(int layer, int expert);
// Throws std::runtime_error unless the request is exactly (layer, expert) with `layer` an MoE
// layer of cfg and `expert` one of `hosted`.
ExpertRef decode_weights_request(const Bytes& request, const ModelConfig& cfg, const std::vector<int>& hosted);

// One expert's floats (w1, w3, w2 at w[0], w[F*C], w[2*F*C]) in `dtype`, optionally after a header
// of (layer, expert) for a gradient request.
Bytes encode_expert_floats(const float* w1, const float* w3, const float* w2, const ModelConfig& cfg, WireDtype dtype,
                           const ExpertRef* header = nullptr);
// Reads a weights reply into w1, w3, w2 (d_ff x d_model floats each); throws on a wrong length or
// a value that is not finite (the outputs are then partly written: a host decodes into scratch).
void decode_weights_reply(const Bytes& reply, const ModelConfig& cfg, WireDtype dtype, float* w1, float* w3, float* w2);
// Reads a gradient request into g1, g3, g2: the header as decode_weights_request checks it, then
// the floats as decode_weights_reply reads them.
ExpertRef decode_grads_request(const Bytes& request, const ModelConfig& cfg, const std::vector<int>& hosted,
                               WireDtype dtype, float* g1, float* g3, float* g2);

}  // namespace pcmoe
