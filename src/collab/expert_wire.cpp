#include "collab/expert_wire.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pcmoe {

WireDtype parse_wire_dtype(const std::string& name) {
  if (name == "fp32") return WireDtype::kF32;
  if (name == "bf16") return WireDtype::kBF16;
  if (name == "fp16") return WireDtype::kF16;
  throw std::runtime_error("config key 'collab.wire_dtype': unknown dtype '" + name + "' (expected fp32, bf16 or fp16)");
}

const char* to_string(WireDtype d) {
  switch (d) {
    case WireDtype::kF32: return "fp32";
    case WireDtype::kBF16: return "bf16";
    case WireDtype::kF16: return "fp16";
  }
  return "?";
}

namespace {
uint32_t bits_of(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float float_of(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
// Drops the low `shift` bits of q, rounding to nearest with ties to even.
uint32_t round_shift(uint32_t q, int shift) {
  const uint32_t kept = q >> shift, rest = q & ((1u << shift) - 1), half = 1u << (shift - 1);
  return kept + (rest > half || (rest == half && (kept & 1)));
}
}  // namespace

uint16_t float_to_bf16(float f) {
  const uint32_t x = bits_of(f);
  if ((x & 0x7fffffff) > 0x7f800000) return uint16_t((x >> 16) | 0x0040);  // NaN: keep it a quiet NaN
  // bf16 is the top half of fp32: rounding the low half may carry into the exponent, up to inf.
  return uint16_t(round_shift(x & 0x7fffffff, 16) | ((x >> 16) & 0x8000));
}

float bf16_to_float(uint16_t h) { return float_of(uint32_t(h) << 16); }

uint16_t float_to_fp16(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000);
  const uint32_t a = x & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00 | uint16_t((a >> 13) & 0x3ff);  // NaN, quiet
  const int e = int(a >> 23);  // fp32 biased exponent; value = 1.m x 2^(e - 127) when e > 0
  if (e >= 143) return sign | 0x7c00;  // >= 2^16: inf (and inf itself)
  const uint32_t m24 = (a & 0x7fffff) | (e ? 0x800000u : 0);
  if (e >= 113) {
    // normal fp16: rebias the exponent (127 -> 15), 13 mantissa bits rounded off; a carry out of
    // the mantissa bumps the exponent, and past 0x7bff (65504) gives 0x7c00 (inf), as IEEE says.
    const uint32_t q = (uint32_t(e - 112) << 23) | (a & 0x7fffff);
    return sign | uint16_t(round_shift(q, 13));
  }
  // subnormal fp16 (or zero): the value in units of 2^-24 is m24 x 2^(e - 126)
  const int shift = 126 - e;  // >= 14
  if (shift > 24) return sign;  // below 2^-25: rounds to zero
  return sign | uint16_t(round_shift(m24, shift));  // may round up to 0x400, the least normal
}

float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0) return std::copysign(float(m) * 0x1p-24f, sign ? -1.0f : 1.0f);  // exact: m < 2^10
  if (e == 31) return float_of(sign | 0x7f800000 | (m << 13));
  return float_of(sign | ((e + 112) << 23) | (m << 13));
}

void put_rows(WireDtype dtype, const float* src, size_t n, std::byte* dst) {
  if (dtype == WireDtype::kF32) {
    if (n) std::memcpy(dst, src, n * 4);
    return;
  }
  const bool bf = dtype == WireDtype::kBF16;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t h = bf ? float_to_bf16(src[i]) : float_to_fp16(src[i]);
    if ((h & 0x7fff) == (bf ? 0x7f80 : 0x7c00) && std::isfinite(src[i]))
      throw std::runtime_error(std::string("collab.wire_dtype ") + to_string(dtype) + ": the value " +
                               std::to_string(src[i]) + " is beyond its range" +
                               (bf ? std::string() : std::string(" (65504); use bf16, which has fp32's range")));
    std::memcpy(dst + 2 * i, &h, 2);  // little-endian hosts (as Writer)
  }
}

void get_rows(WireDtype dtype, const std::byte* src, size_t n, float* dst) {
  if (dtype == WireDtype::kF32) {
    if (n) std::memcpy(dst, src, n * 4);
  } else {
    const bool bf = dtype == WireDtype::kBF16;
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = bf ? bf16_to_float(h) : fp16_to_float(h);
    }
  }
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
