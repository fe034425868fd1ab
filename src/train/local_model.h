// A whole model in one process: every parameter and every expert local, one AdamW. The
// centralised baseline, a single-party run, and `pcmoe train`.
#pragma once
#include <nlohmann/json.hpp>

#include "model/local_experts.h"
#include "model/model.h"
#include "train/adamw.h"

namespace pcmoe {

struct LocalModel {
  LocalModel(const ModelConfig& m, const TrainConfig& t);  // initialised from t.seed
  // Planned bytes by category (parameters, gradients, optimizer, activations, scratch) and total.
  nlohmann::json memory() const;

  ParamSet params;
  LocalExperts experts;
  Model model;
  AdamW opt;
};

}  // namespace pcmoe
