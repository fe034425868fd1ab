// fedavg-lora's party model: a frozen base (weights only: no gradients, no optimizer state), its
// experts computed here, and LoRA adapters (model/lora.h) with their own AdamW.
#pragma once
#include <nlohmann/json.hpp>

#include "model/local_experts.h"
#include "model/lora.h"
#include "model/model.h"
#include "train/adamw.h"

namespace pcmoe::fed {

struct LoraModel {
  // The base is initialised from t.seed (callers overwrite it with the shared start), the
  // adapters from t.seed (A random, B zero).
  LoraModel(const ModelConfig& m, const TrainConfig& t, const LoraSpec& spec);
  LoraModel(const LoraModel&) = delete;
  LoraModel& operator=(const LoraModel&) = delete;
  // Planned bytes by category, as LocalModel::memory(): parameters are the base's and the
  // adapters', gradients and optimizer state the adapters' only.
  nlohmann::json memory() const;

  ParamSet base;
  LocalExperts experts;
  LoraAdapters lora;
  Model model;
  AdamW opt;
};

}  // namespace pcmoe::fed
