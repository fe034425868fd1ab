#include "collab/expert_wire.h"

#include <stdexcept>
#include <string>

namespace pcmoe {

Bytes encode_expert_request(MsgKind kind, const ModelConfig& cfg, int layer, const std::vector<int>& hosted,
                            const int* offsets, const float* in, const int* unit, int n_units) {
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
  for (int e : hosted) w.floats(in + offsets[e] * C, (offsets[e + 1] - offsets[e]) * C);
  return w.take();
}

void decode_expert_request(MsgKind kind, const Bytes& request, const ModelConfig& cfg,
                           const std::vector<int>& hosted, int max_rows, ExpertRequest& out) {
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
  }
  out.rows.resize((size_t)out.n_rows() * cfg.d_model);
  r.floats(out.rows.data(), out.rows.size());
  r.expect_end();
}

}  // namespace pcmoe
