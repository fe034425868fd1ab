// A whole model in one process: every parameter and every expert local, one AdamW. The
// centralised baseline, a single-party run, and `pcmoe train`.
#pragma once
#include <nlohmann/json.hpp>

#include "model/local_experts.h"
#include "model/model.h"
#include "train/adamw.h"

namespace pcmoe {

struct LocalModel {
  // Initialised from t.seed; micro-batches of max_batch sequences (0: t.batch_size); per_unit
  // plans DP-SGD's per-unit passes.
  LocalModel(const ModelConfig& m, const TrainConfig& t, int max_batch = 0, bool per_unit = false);
  // Planned bytes by category (parameters, gradients, optimizer, activations, scratch) and total.
  nlohmann::json memory() const;

  ParamSet params;
  LocalExperts experts;
  Model model;
  AdamW opt;
};

}  // namespace pcmoe
