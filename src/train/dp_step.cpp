#include "train/dp_step.h"

namespace pcmoe {

ClippedBatch dp_local_step(Model& model, ParamSet& params, AdamW& opt, NoiseSource& noise, const PrivacyUnits& units,
                           const DpPlan& plan, const PoissonSampler& batches, int64_t step, float lr) {
  params.zero_grads();
  const ClippedBatch cb = accumulate_clipped(model, units, batches.sample(step, units.n_units(), plan.q), plan);
  privatise_gradients(params, noise, plan);
  opt.step(params, lr);
  return cb;
}

}  // namespace pcmoe
