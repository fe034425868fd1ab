#include "train/adamw.h"

#include <cmath>

namespace pcmoe {

float learning_rate(const TrainConfig& c, int64_t step) {
  if (step < c.warmup) return c.lr * float(step + 1) / float(c.warmup);
  const double progress = double(step - c.warmup) / double(std::max(1, c.steps - c.warmup));
  const double p = std::min(1.0, progress);
  return static_cast<float>(c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * p)));
}

std::vector<double> grad_sq_sums(const ParamSet& params) {
  const std::vector<ParamTensor>& ts = params.tensors();
  std::vector<double> sums(ts.size());
  const float* g = params.grads();
  // One tensor per task: each sum runs in the same order whatever the thread count.
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < ts.size(); ++i) {
    double s = 0;
    const size_t end = ts[i].offset + ts[i].numel;
#pragma omp simd reduction(+ : s)
    for (size_t j = ts[i].offset; j < end; ++j) s += double(g[j]) * g[j];
    sums[i] = s;
  }
  return sums;
}

double grad_norm(const ParamSet& params) {
  double total = 0;
  for (double s : grad_sq_sums(params)) total += s;
  return std::sqrt(total);
}

float clip_coefficient(double norm, float max_norm) {
  if (max_norm <= 0) return 1.0f;
  const float coef = static_cast<float>(max_norm / (norm + 1e-6));
  return coef < 1.0f ? coef : 1.0f;
}

AdamW::AdamW(const ParamSet& params, const TrainConfig& c)
    : beta1_(c.beta1), beta2_(c.beta2), eps_(c.eps), weight_decay_(c.weight_decay),
      m_(params.numel() * sizeof(float)), v_(params.numel() * sizeof(float)) {}

void AdamW::step(ParamSet& params, float lr) {
  ++t_;
  const float bc1 = 1.0f - std::pow(beta1_, (float)t_);
  const float bc2_sqrt = std::sqrt(1.0f - std::pow(beta2_, (float)t_));
  const float step_size = lr / bc1;
  float* p = params.values();
  const float* g = params.grads();
  float* m = m_.floats();
  float* v = v_.floats();
  const std::vector<ParamTensor>& ts = params.tensors();
  // One parallel region for the whole update (a fork and join per tensor cost more than the
  // update of the small ones); each tensor's elements are shared out without a barrier.
#pragma omp parallel
  for (const ParamTensor& t : ts) {
    const float decay = t.decay ? 1.0f - lr * weight_decay_ : 1.0f;
    const size_t end = t.offset + t.numel;
#pragma omp for simd schedule(static) nowait
    for (size_t i = t.offset; i < end; ++i) {
      p[i] *= decay;
      m[i] = beta1_ * m[i] + (1.0f - beta1_) * g[i];
      v[i] = beta2_ * v[i] + (1.0f - beta2_) * g[i] * g[i];
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps_);
    }
  }
}

}  // namespace pcmoe
