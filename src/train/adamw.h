// AdamW (as torch.optim.AdamW), the learning-rate schedule and global gradient-norm clipping.
#pragma once
#include <cstdint>
#include <vector>

#include "model/params.h"
#include "tensor/buffer.h"
#include "train/train_config.h"

namespace pcmoe {

// lr at optimizer step `step` (0-based): linear warm-up, then cosine decay to min_lr.
float learning_rate(const TrainConfig& c, int64_t step);

// Sum of squared gradients of each tensor of `params`, in double, in layout order.
std::vector<double> grad_sq_sums(const ParamSet& params);
// Global L2 norm: the per-tensor sums added in canonical (layout) order, so a model whose
// tensors are spread over several parties gets the same norm when its parts are merged in
// that order.
double grad_norm(const ParamSet& params);
// torch.nn.utils.clip_grad_norm_'s factor: max_norm / (norm + 1e-6) when that is below 1, else 1
// (and 1 when clipping is off, max_norm = 0).
float clip_coefficient(double norm, float max_norm);

class AdamW {
 public:
  AdamW(const ParamSet& params, const TrainConfig& c);
  // One update of every tensor of `params` with their current gradients.
  void step(ParamSet& params, float lr);
  int64_t steps_done() const { return t_; }
  void set_steps_done(int64_t t) { t_ = t; }
  float* m() const { return m_.floats(); }
  float* v() const { return v_.floats(); }
  size_t state_bytes() const { return m_.bytes() + v_.bytes(); }

 private:
  float beta1_, beta2_, eps_, weight_decay_;
  int64_t t_ = 0;
  AlignedBuffer m_, v_;
};

}  // namespace pcmoe
