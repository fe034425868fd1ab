#include "train/adamw.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

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

namespace {
struct Update {
  float decay, beta1, beta2, step_size, bc2_sqrt, eps;
};

#ifdef __AVX512F__
// Up to 16 elements from i: the lanes of `live`; aligned: p + i is 64-byte aligned and all 16
// live, stored with streaming stores. Every element, wherever it falls, goes through the same
// vector operations, so its bits do not depend on where a thread's share or a tensor starts.
inline void update16(float* p, const float* g, float* m, float* v, size_t i, __mmask16 live, bool aligned,
                     const Update& u) {
  const __m512 gi = _mm512_maskz_loadu_ps(live, g + i);
  const __m512 mi = _mm512_fmadd_ps(_mm512_set1_ps(u.beta1), _mm512_maskz_loadu_ps(live, m + i),
                                    _mm512_mul_ps(_mm512_set1_ps(1.0f - u.beta1), gi));
  const __m512 vi = _mm512_fmadd_ps(_mm512_set1_ps(u.beta2), _mm512_maskz_loadu_ps(live, v + i),
                                    _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(1.0f - u.beta2), gi), gi));
  const __m512 den =
      _mm512_add_ps(_mm512_div_ps(_mm512_maskz_sqrt_ps(live, vi), _mm512_set1_ps(u.bc2_sqrt)), _mm512_set1_ps(u.eps));
  // p · decay rounded on its own, as the scalar update always did (written as a plain multiply,
  // the compiler would fuse it into the subtraction).
  const __m512 decayed = _mm512_maskz_mul_round_ps(live, _mm512_maskz_loadu_ps(live, p + i), _mm512_set1_ps(u.decay),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 pi = _mm512_sub_ps(decayed, _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(u.step_size), mi), den));
  if (aligned) {
    _mm512_stream_ps(m + i, mi);
    _mm512_stream_ps(v + i, vi);
    _mm512_stream_ps(p + i, pi);
  } else {
    _mm512_mask_storeu_ps(m + i, live, mi);
    _mm512_mask_storeu_ps(v + i, live, vi);
    _mm512_mask_storeu_ps(p + i, live, pi);
  }
}
#endif

// Elements [i0, i1). The update reads and writes 4 x 4 bytes per parameter, far more than any
// cache holds at this model size, so with AVX-512 the aligned middle uses streaming stores:
// they skip reading each line of p, m and v only to overwrite it.
void update_range(float* p, const float* g, float* m, float* v, size_t i0, size_t i1, const Update& u) {
#ifdef __AVX512F__
  // p, m and v start on 64-byte boundaries (AlignedBuffer), so one test aligns all three; were
  // they ever to differ, every store stays an unaligned masked one.
  const auto misalign = [](const float* x) { return reinterpret_cast<uintptr_t>(x) % 64; };
  const bool streamable = misalign(p) == misalign(m) && misalign(p) == misalign(v);
  size_t i = i0;
  while (i < i1) {
    const size_t to_line = (64 - misalign(p + i)) / 4;  // 16 when aligned
    const size_t n = std::min<size_t>(i1 - i, to_line);
    update16(p, g, m, v, i, (__mmask16)((1u << n) - 1), streamable && n == 16, u);
    i += n;
  }
#else
  for (size_t i = i0; i < i1; ++i) {
    p[i] *= u.decay;
    m[i] = u.beta1 * m[i] + (1.0f - u.beta1) * g[i];
    v[i] = u.beta2 * v[i] + (1.0f - u.beta2) * g[i] * g[i];
    p[i] -= u.step_size * m[i] / (std::sqrt(v[i]) / u.bc2_sqrt + u.eps);
  }
#endif
}
}  // namespace

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
  // update of the small ones); each thread takes one contiguous share of every tensor.
#pragma omp parallel
  {
    const size_t nt = omp_get_num_threads(), th = omp_get_thread_num();
    for (const ParamTensor& t : ts) {
      const Update u{t.decay ? 1.0f - lr * weight_decay_ : 1.0f, beta1_, beta2_, step_size, bc2_sqrt, eps_};
      update_range(p, g, m, v, t.offset + t.numel * th / nt, t.offset + t.numel * (th + 1) / nt, u);
    }
#ifdef __AVX512F__
    _mm_sfence();  // the streamed stores are visible before the region ends
#endif
  }
}

}  // namespace pcmoe
