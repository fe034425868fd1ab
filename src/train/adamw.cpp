#include "train/adamw.h"

#include <cmath>

namespace pcmoe {

float learning_rate(const TrainConfig& c, int64_t step) {
  if (step < c.warmup) return c.lr * float(step + 1) / float(c.warmup);
  const double progress = double(step - c.warmup) / double(std::max(1, c.steps - c.warmup));
  const double p = std::min(1.0, progress);
  return static_cast<float>(c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * p)));
}

double grad_norm(const ParamSet& params) {
  const float* g = params.grads();
  const size_t n = params.numel();
  double total = 0;
  constexpr size_t kChunk = 4096;  // fixed chunks: the sum order does not depend on threads
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks; ++c) {
    double s = 0;
    for (size_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += double(g[i]) * g[i];
    partial[c] = s;
  }
  for (double s : partial) total += s;
  return std::sqrt(total);
}

double clip_grad_norm(ParamSet& params, float max_norm) {
  const double norm = grad_norm(params);
  const float coef = static_cast<float>(max_norm / (norm + 1e-6));
  if (max_norm > 0 && coef < 1.0f) {
    float* g = params.grads();
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < params.numel(); ++i) g[i] *= coef;
  }
  return norm;
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
  for (const ParamTensor& t : params.tensors()) {
    const float decay = t.decay ? 1.0f - lr * weight_decay_ : 1.0f;
    const size_t end = t.offset + t.numel;
#pragma omp parallel for simd schedule(static)
    for (size_t i = t.offset; i < end; ++i) {
      p[i] *= decay;
      m[i] = beta1_ * m[i] + (1.0f - beta1_) * g[i];
      v[i] = beta2_ * v[i] + (1.0f - beta2_) * g[i] * g[i];
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps_);
    }
  }
}

}  // namespace pcmoe
