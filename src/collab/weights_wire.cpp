#include "collab/weights_wire.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pcmoe {
namespace {
constexpr size_t kHeaderBytes = 8;

ExpertRef read_header(const Bytes& b, const ModelConfig& cfg, const std::vector<int>& hosted) {
  Reader r(b);
  ExpertRef ref;
  const uint32_t layer = r.u32(), expert = r.u32();
  if (layer >= (uint32_t)cfg.n_layers || !cfg.is_moe((int)layer))
    throw std::runtime_error("layer " + std::to_string(layer) + " is not an MoE layer of the model (" +
                             std::to_string(cfg.n_layers) + " layers, every " + std::to_string(cfg.moe_every) +
                             "th MoE)");
  if (std::find(hosted.begin(), hosted.end(), (int)expert) == hosted.end())
    throw std::runtime_error("expert " + std::to_string(expert) + " of layer " + std::to_string(layer) +
                             " is not hosted here");
  ref.layer = (int)layer;
  ref.expert = (int)expert;
  return ref;
}

void read_floats(const std::byte* src, size_t bytes, const ModelConfig& cfg, WireDtype dtype, float* w1, float* w3,
                 float* w2) {
  const size_t n = expert_floats(cfg), fc = n / 3, b = wire_float_bytes(dtype);
  if (bytes != n * b)
    throw std::runtime_error("an expert's floats take " + std::to_string(n * b) + " bytes in " + to_string(dtype) +
                             ", the message has " + std::to_string(bytes));
  get_rows(dtype, src, fc, w1);
  get_rows(dtype, src + fc * b, fc, w3);
  get_rows(dtype, src + 2 * fc * b, fc, w2);
}
}  // namespace

Exchange parse_exchange(const std::string& name) {
  if (name == "activations") return Exchange::kActivations;
  if (name == "weights") return Exchange::kWeights;
  throw std::runtime_error("config key 'collab.exchange': unknown exchange '" + name +
                           "' (expected activations or weights)");
}

Bytes encode_weights_request(int layer, int expert) {
  Writer w;
  w.u32((uint32_t)layer);
  w.u32((uint32_t)expert);
  return w.take();
}

ExpertRef decode_weights_request(const Bytes& request, const ModelConfig& cfg, const std::vector<int>& hosted) {
  if (request.size() != kHeaderBytes)
    throw std::runtime_error("a weights request is 8 bytes (layer, expert), this one " + std::to_string(request.size()));
  return read_header(request, cfg, hosted);
}

Bytes encode_expert_floats(const float* w1, const float* w3, const float* w2, const ModelConfig& cfg, WireDtype dtype,
                           const ExpertRef* header) {
  const size_t fc = (size_t)cfg.d_ff * cfg.d_model, b = wire_float_bytes(dtype), at = header ? kHeaderBytes : 0;
  Bytes out(at + 3 * fc * b);
  if (header) {
    const Bytes h = encode_weights_request(header->layer, header->expert);
    std::copy(h.begin(), h.end(), out.begin());
  }
  put_rows(dtype, w1, fc, out.data() + at);
  put_rows(dtype, w3, fc, out.data() + at + fc * b);
  put_rows(dtype, w2, fc, out.data() + at + 2 * fc * b);
  return out;
}

void decode_weights_reply(const Bytes& reply, const ModelConfig& cfg, WireDtype dtype, float* w1, float* w3, float* w2) {
  read_floats(reply.data(), reply.size(), cfg, dtype, w1, w3, w2);
}

ExpertRef decode_grads_request(const Bytes& request, const ModelConfig& cfg, const std::vector<int>& hosted,
                               WireDtype dtype, float* g1, float* g3, float* g2) {
  if (request.size() < kHeaderBytes)
    throw std::runtime_error("truncated gradient request: " + std::to_string(request.size()) + " bytes");
  const Bytes head(request.begin(), request.begin() + kHeaderBytes);
  const ExpertRef ref = read_header(head, cfg, hosted);
  read_floats(request.data() + kHeaderBytes, request.size() - kHeaderBytes, cfg, dtype, g1, g3, g2);
  return ref;
}

}  // namespace pcmoe
