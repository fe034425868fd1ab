#include "model/expert_activations.h"

#include <algorithm>
#include <stdexcept>

#include "tensor/arena.h"

namespace pcmoe {

ExpertActivations::ExpertActivations(const ModelConfig& cfg, int max_rows, bool per_unit, bool keep_inputs)
    : saved(cfg.n_layers), n_experts_(cfg.n_experts) {
  const size_t C = cfg.d_model, F = cfg.d_ff, R = max_rows;
  norm_scratch_floats = per_unit ? std::max(C * F, R * std::min(C, F)) : 0;
  plan_and_place(buffer_, [&](Arena& a) {
    for (int l = 0; l < cfg.n_layers; ++l) {
      if (!cfg.is_moe(l)) continue;
      Saved& s = saved[l];
      s.x = a.take<float>(R * C);
      s.g = a.take<float>(R * F);
      s.u = a.take<float>(R * F);
      if (per_unit) {
        s.dy = a.take<float>(R * C);
        s.unit = a.take<int>(R);
      }
    }
    act = a.take<float>(R * F);
    if (per_unit || keep_inputs) {
      dg = a.take<float>(R * F);
      du = a.take<float>(R * F);
    }
    if (per_unit) {
      dx = a.take<float>(R * C);
      norm_scratch = a.take<float>(norm_scratch_floats);
    }
  });
}

void ExpertActivations::check_rows(int layer, const int* offsets) const {
  if (!std::equal(offsets, offsets + n_experts_ + 1, saved[layer].offsets.begin()))
    throw std::logic_error("expert backward does not match the rows of the last forward");
}

}  // namespace pcmoe
