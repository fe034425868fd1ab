// A model and its weights loaded from a checkpoint, for inference: pcmoe eval and generate, and
// the audits that score a released model.
#pragma once
#include <string>

#include "collab/run_config.h"
#include "model/local_experts.h"
#include "model/model.h"
#include "model/params.h"

namespace pcmoe {

struct LoadedModel {
  // dir: a checkpoint directory (or one whose ".old" twin survived an interrupted swap); every
  // expert is loaded locally. max_batch: windows per forward. Sets the thread count to the
  // checkpoint's train.threads. Throws std::runtime_error if the checkpoint is missing or corrupt.
  LoadedModel(const std::string& dir, int max_batch);
  LoadedModel(const LoadedModel&) = delete;
  LoadedModel& operator=(const LoadedModel&) = delete;

  RunConfig cfg;
  ParamSet params;
  LocalExperts experts;
  Model model;
};

}  // namespace pcmoe
