// One centralised DP-SGD step (privacy/dp_sgd.h's clipping and noise, then AdamW): here, above
// privacy/, because the optimizer is train/'s.
#pragma once
#include <cstdint>

#include "privacy/dp_sgd.h"
#include "train/adamw.h"

namespace pcmoe {

// Zero the gradients, clipped sum over step `step`'s Poisson batch, Gaussian noise N(0, σ²C²) on
// every coordinate, division by the expected batch qN, AdamW at `lr`.
ClippedBatch dp_local_step(Model& model, ParamSet& params, AdamW& opt, NoiseSource& noise, const PrivacyUnits& units,
                           const DpPlan& plan, const PoissonSampler& batches, int64_t step, float lr);

}  // namespace pcmoe
