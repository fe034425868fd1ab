// AdamW (as torch.optim.AdamW), the learning-rate schedule and global gradient-norm clipping.
#pragma once
#include <cstdint>

#include "model/params.h"
#include "tensor/buffer.h"
#include "train/train_config.h"

namespace pcmoe {

// lr at optimizer step `step` (0-based): linear warm-up, then cosine decay to min_lr.
float learning_rate(const TrainConfig& c, int64_t step);

// Global L2 norm of all gradients of `params` (accumulated in double, in a fixed order).
double grad_norm(const ParamSet& params);
// Scales the gradients so that their norm is at most max_norm (as clip_grad_norm_). Returns the
// norm before clipping.
double clip_grad_norm(ParamSet& params, float max_norm);

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
