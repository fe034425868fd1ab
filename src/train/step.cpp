#include "train/step.h"

namespace pcmoe {

LossStats accumulate_gradients(Model& model, ParamSet& params, const int32_t* windows, int batch,
                               int grad_accum) {
  params.zero_grads();
  const int row = model.config().seq_len + 1;
  const float scale = 1.0f / grad_accum;
  LossStats sum;
  for (int m = 0; m < grad_accum; ++m) {
    LossStats s = model.forward(windows + (size_t)m * batch * row, batch, scale);
    model.backward();
    sum.ce += s.ce * scale;
    sum.aux += s.aux * scale;
    sum.z += s.z * scale;
    sum.total += s.total * scale;
  }
  return sum;
}

UpdateStats apply_update(ParamSet& params, AdamW& opt, const TrainConfig& c, int64_t step) {
  UpdateStats u;
  u.grad_norm = grad_norm(params);
  scale_grads(params, clip_coefficient(u.grad_norm, c.grad_clip));
  u.lr = learning_rate(c, step);
  opt.step(params, u.lr);
  return u;
}

}  // namespace pcmoe
