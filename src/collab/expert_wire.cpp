#include "collab/expert_wire.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pcmoe {

WireDtype parse_wire_dtype(const std::string& name) { return parse_dtype(name, "collab.wire_dtype"); }

void put_rows(WireDtype dtype, const float* src, size_t n, std::byte* dst) {
  const DtypeTraits& t = dtype_traits(dtype);
  t.from_f32(src, n, dst);
  if (dtype == WireDtype::kF32) return;
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, dst + 2 * i, 2);
    if ((h & 0x7fff) == t.inf_bits && std::isfinite(src[i]))
      throw std::runtime_error(std::string("collab.wire_dtype ") + t.name + ": the value " + std::to_string(src[i]) +
                               " is beyond its range" +
                               (dtype == WireDtype::kF16 ? std::string(" (65504); use bf16, which has fp32's range")
                                                         : std::string()));
  }
}

void get_rows(WireDtype dtype, const std::byte* src, size_t n, float* dst) {
  dtype_traits(dtype).to_f32(src, n, dst);
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(dst[i]))
      throw std::runtime_error("value " + std::to_string(i) + " of the rows is " + std::to_string(dst[i]) +
                               ": rows must be finite");
}

namespace {
// The exact length a message must have: `head` bytes read so far plus the rest; the errors are
// Reader's, so a malformed call reads the same in every dtype.
void expect_size(const Bytes& b, size_t need) {
  if (b.size() < need)
    throw std::runtime_error("truncated message: needs " + std::to_string(need) + " bytes, has " + std::to_string(b.size()));
  if (b.size() > need)
    throw std::runtime_error("message has " + std::to_string(b.size() - need) + " unexpected trailing bytes");
}

void refuse_units_dtype(MsgKind kind, WireDtype dtype) {
  if (kind == MsgKind::kExpertBackwardUnits && dtype != WireDtype::kF32)
    throw std::runtime_error("per-unit (DP-SGD) expert calls travel in fp32 only, not " + std::string(to_string(dtype)));
}
}  // namespace

Bytes encode_expert_request(MsgKind kind, const ModelConfig& cfg, int layer, const std::vector<int>& hosted,
                            const int* offsets, const float* in, const int* unit, int n_units, WireDtype dtype) {
  refuse_units_dtype(kind, dtype);
  const size_t C = cfg.d_model;
  Writer w;
  w.u32((uint32_t)layer);
  w.u32((uint32_t)hosted.size());
  for (int e : hosted) w.u32((uint32_t)(offsets[e + 1] - offsets[e]));
  if (kind == MsgKind::kExpertBackwardUnits) {
    w.u32((uint32_t)n_units);
    for (int e : hosted)
      for (int r = offsets[e]; r < offsets[e + 1]; ++r) w.u32((uint32_t)unit[r]);
  }
  Bytes b = w.take();
  size_t at = b.size(), floats = 0;
  for (int e : hosted) floats += (offsets[e + 1] - offsets[e]) * C;
  b.resize(at + floats * wire_float_bytes(dtype));
  for (int e : hosted) {
    const size_t n = (offsets[e + 1] - offsets[e]) * C;
    put_rows(dtype, in + offsets[e] * C, n, b.data() + at);
    at += n * wire_float_bytes(dtype);
  }
  return b;
}

void decode_expert_request(MsgKind kind, const Bytes& request, const ModelConfig& cfg,
                           const std::vector<int>& hosted, int max_rows, ExpertRequest& out, WireDtype dtype) {
  refuse_units_dtype(kind, dtype);
  Reader r(request);
  const uint32_t layer = r.u32();
  if (layer >= (uint32_t)cfg.n_layers || !cfg.is_moe((int)layer))
    throw std::runtime_error("expert call for layer " + std::to_string(layer) + ", which is not an MoE layer");
  const uint32_t k = r.u32();
  if (k != hosted.size())
    throw std::runtime_error("expert call names " + std::to_string(k) + " experts; this host holds " +
                             std::to_string(hosted.size()));
  std::vector<int> rows(cfg.n_experts, 0);
  for (int e : hosted) rows[e] = (int)r.u32();
  size_t head = 8 + 4 * hosted.size();
  out.layer = (int)layer;
  out.offsets.assign(cfg.n_experts + 1, 0);
  for (int e = 0; e < cfg.n_experts; ++e) {
    if (rows[e] < 0 || (int64_t)out.offsets[e] + rows[e] > max_rows)
      throw std::runtime_error("expert call carries more rows than a party's batch can route");
    out.offsets[e + 1] = out.offsets[e] + rows[e];
  }
  out.n_units = 0;
  out.units.clear();
  if (kind == MsgKind::kExpertBackwardUnits) {
    const uint32_t n_units = r.u32();
    if (n_units < 1 || n_units > (uint32_t)max_rows)
      throw std::runtime_error("per-unit backward names " + std::to_string(n_units) + " units");
    out.n_units = (int)n_units;
    out.units.resize(out.n_rows());
    for (int& u : out.units) {
      u = (int)r.u32();
      if (u < 0 || (uint32_t)u >= n_units) throw std::runtime_error("per-unit backward: unit index out of range");
    }
    for (int e : hosted)
      for (int i = out.offsets[e] + 1; i < out.offsets[e + 1]; ++i)
        if (out.units[i] < out.units[i - 1])
          throw std::runtime_error("per-unit backward: units not ascending within an expert");
    head += 4 + 4 * out.units.size();
  }
  const size_t floats = (size_t)out.n_rows() * cfg.d_model;
  expect_size(request, head + floats * wire_float_bytes(dtype));
  out.rows.resize(floats);
  get_rows(dtype, request.data() + head, floats, out.rows.data());
}

Bytes encode_expert_reply(const float* rows, size_t n_floats, const double* unit_sq, int n_units, WireDtype dtype) {
  const size_t fb = n_floats * wire_float_bytes(dtype);
  Bytes b(fb + (size_t)n_units * sizeof(double));
  put_rows(dtype, rows, n_floats, b.data());
  if (n_units) std::memcpy(b.data() + fb, unit_sq, (size_t)n_units * sizeof(double));
  return b;
}

void decode_expert_reply(const Bytes& reply, const ModelConfig& cfg, const std::vector<int>& hosted, const int* offsets,
                         float* out, double* unit_sq, int n_units, WireDtype dtype) {
  const size_t C = cfg.d_model;
  size_t floats = 0;
  for (int e : hosted) floats += (offsets[e + 1] - offsets[e]) * C;
  const size_t fb = floats * wire_float_bytes(dtype);
  expect_size(reply, fb + (size_t)n_units * sizeof(double));
  std::vector<double> sq(n_units);
  if (n_units) std::memcpy(sq.data(), reply.data() + fb, (size_t)n_units * sizeof(double));
  for (double s : sq)
    if (!(s >= 0) || !std::isfinite(s))
      throw std::runtime_error("a unit's squared gradient norm is " + std::to_string(s) + ": must be finite and >= 0");
  size_t at = 0;
  for (int e : hosted) {
    const size_t n = (offsets[e + 1] - offsets[e]) * C;
    get_rows(dtype, reply.data() + at, n, out + offsets[e] * C);
    at += n * wire_float_bytes(dtype);
  }
  for (int u = 0; u < n_units; ++u) unit_sq[u] += sq[u];
}

}  // namespace pcmoe
