// One optimizer step, in two named halves so callers (and tests) can look between them.
#pragma once
#include <cstdint>

#include "model/model.h"
#include "train/adamw.h"

namespace pcmoe {

// Zeroes the gradients, then forward+backward over grad_accum micro-batches of
// `model.max_batch()` rows each (windows[grad_accum * batch, T+1]), each scaled by 1/grad_accum.
// Returns the losses averaged over the micro-batches.
LossStats accumulate_gradients(Model& model, ParamSet& params, const int32_t* windows, int batch,
                               int grad_accum);

struct UpdateStats {
  double grad_norm;  // before clipping
  float lr;
};
// Clips the gradients and applies AdamW with the learning rate of `step`.
UpdateStats apply_update(ParamSet& params, AdamW& opt, const TrainConfig& c, int64_t step);

}  // namespace pcmoe
