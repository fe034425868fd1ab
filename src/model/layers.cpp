#include "model/layers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/region_errors.h"
#include "tensor/gemm.h"
#include "tensor/gemm_strided.h"
#include "tensor/vmath.h"

namespace pcmoe {

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) std::memcpy(out + (size_t)t * C, wte + (size_t)tokens[t] * C, C * sizeof(float));
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C,
                        const GradSink& sink) {
  sink.embedding(dwte, dout, tokens, N, C);
}

void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    const float* xt = x + (size_t)t * C;
    float ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int c = 0; c < C; ++c) ss += xt[c] * xt[c];
    float r = 1.0f / std::sqrt(ss / C + eps);
    rstd[t] = r;
    float* ot = out + (size_t)t * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) ot[c] = xt[c] * r * w[c];
  }
}

void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C, const GradSink& sink) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    const float* xt = x + (size_t)t * C;
    const float* dt = dout + (size_t)t * C;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int c = 0; c < C; ++c) dot += dt[c] * w[c] * xt[c];
    const float r = rstd[t];
    const float k = dot * r * r * r / C;
    float* dxt = dx + (size_t)t * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) dxt[c] += dt[c] * w[c] * r - k * xt[c];
  }
  sink.rmsnorm_weight(dw, dout, x, rstd, N, C);
}

void rope_apply(float* x, int B, int T, int heads, int D, float theta, bool inverse) {
  const int half = D / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0f * i / D);
  const float sign = inverse ? -1.0f : 1.0f;
  // One table per position, shared by every sequence of the batch.
  std::vector<float> cs((size_t)T * half), sn((size_t)T * half);
#pragma omp parallel for schedule(static)
  for (int pos = 0; pos < T; ++pos)
    for (int i = 0; i < half; ++i) {
      float a = pos * inv_freq[i];
      cs[(size_t)pos * half + i] = std::cos(a);
      sn[(size_t)pos * half + i] = sign * std::sin(a);
    }
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; ++bt) {
    const float* c = cs.data() + (size_t)(bt % T) * half;
    const float* s = sn.data() + (size_t)(bt % T) * half;
    for (int h = 0; h < heads; ++h) {
      float* v = x + ((size_t)bt * heads + h) * D;
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

namespace {
// Query rows per block: a block's products span only the keys up to its last row, so the
// causal upper triangle is mostly skipped while each product stays a GEMM.
constexpr int kAttBlock = 64;

// Rows t0..t1-1 of one head's unscaled scores into probabilities, in place; the masked entries
// up to column t1 become 0 so the block's products over keys 0..t1-1 ignore them.
void causal_softmax_rows(float* att, int T, int t0, int t1, float scale) {
  for (int t = t0; t < t1; ++t) {
    float* p = att + (size_t)t * T;
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int s = 0; s <= t; ++s) {
      p[s] *= scale;
      mx = std::max(mx, p[s]);
    }
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int s = 0; s <= t; ++s) {
      p[s] = vexp(p[s] - mx);
      sum += p[s];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int s = 0; s <= t; ++s) p[s] *= inv;
    for (int s = t + 1; s < t1; ++s) p[s] = 0;
  }
}
}  // namespace

void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       int B, int T, int H, int KV, int D) {
  const int group = H / KV;
  const float scale = 1.0f / std::sqrt((float)D);
  const int qs = H * D, ks = KV * D;
  RegionErrors errors;  // a failed product must reach the caller, not terminate the process
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      errors.run([&] {
        const float* qh = q + (size_t)b * T * qs + (size_t)h * D;
        const float* kh = k + (size_t)b * T * ks + (size_t)(h / group) * D;
        const float* vh = v + (size_t)b * T * ks + (size_t)(h / group) * D;
        float* p = att + ((size_t)b * H + h) * T * T;
        float* oh = out + (size_t)b * T * qs + (size_t)h * D;
        for (int t0 = 0; t0 < T; t0 += kAttBlock) {
          const int t1 = std::min(T, t0 + kAttBlock), rows = t1 - t0;
          float* pb = p + (size_t)t0 * T;
          matmul_nt_ld(pb, T, qh + (size_t)t0 * qs, qs, kh, ks, rows, t1, D, false);
          causal_softmax_rows(p, T, t0, t1, scale);
          matmul_nn_ld(oh + (size_t)t0 * qs, qs, pb, T, vh, ks, rows, D, t1, false);
        }
      });
  errors.rethrow();
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* att,
                        const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D) {
  const int group = H / KV;
  const float scale = 1.0f / std::sqrt((float)D);
  const int qs = H * D, ks = KV * D;
  // One task per (sequence, key/value head): the query heads of a group all add into the same
  // dk and dv rows, so they run in one task, in a fixed order.
  RegionErrors errors;  // as in attention_forward
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int kvh = 0; kvh < KV; ++kvh)
      errors.run([&] {
        std::vector<float> ds((size_t)std::min(T, kAttBlock) * T);
        const float* kh = k + (size_t)b * T * ks + (size_t)kvh * D;
        const float* vh = v + (size_t)b * T * ks + (size_t)kvh * D;
        float* dkh = dk + (size_t)b * T * ks + (size_t)kvh * D;
        float* dvh = dv + (size_t)b * T * ks + (size_t)kvh * D;
        for (int s = 0; s < T; ++s) {
          std::memset(dkh + (size_t)s * ks, 0, D * sizeof(float));
          std::memset(dvh + (size_t)s * ks, 0, D * sizeof(float));
        }
        for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
          const float* p = att + ((size_t)b * H + h) * T * T;
          const float* goh = dout + (size_t)b * T * qs + (size_t)h * D;
          const float* qh = q + (size_t)b * T * qs + (size_t)h * D;
          float* dqh = dq + (size_t)b * T * qs + (size_t)h * D;
          for (int t0 = 0; t0 < T; t0 += kAttBlock) {
            const int t1 = std::min(T, t0 + kAttBlock), rows = t1 - t0;
            const float* pb = p + (size_t)t0 * T;
            // dP = dO Vᵀ, then dS = P (dP - rowsum(P dP)) scale, zero where masked.
            matmul_nt_ld(ds.data(), T, goh + (size_t)t0 * qs, qs, vh, ks, rows, t1, D, false);
            matmul_tn_ld(dvh, ks, pb, T, goh + (size_t)t0 * qs, qs, t1, D, rows, true);
            for (int t = t0; t < t1; ++t) {
              const float* pt = pb + (size_t)(t - t0) * T;
              float* dst = ds.data() + (size_t)(t - t0) * T;
              float pdp = 0;
#pragma omp simd reduction(+ : pdp)
              for (int s = 0; s <= t; ++s) pdp += pt[s] * dst[s];
#pragma omp simd
              for (int s = 0; s <= t; ++s) dst[s] = pt[s] * (dst[s] - pdp) * scale;
              for (int s = t + 1; s < t1; ++s) dst[s] = 0;
            }
            matmul_nn_ld(dqh + (size_t)t0 * qs, qs, ds.data(), T, kh, ks, rows, D, t1, false);
            matmul_tn_ld(dkh, ks, ds.data(), T, qh + (size_t)t0 * qs, qs, t1, D, rows, true);
          }
        }
      });
  errors.rethrow();
}

void swiglu_forward(float* y, float* g, float* u, float* act, const float* x, const float* w1,
                    const float* w3, const float* w2, int N, int C, int F, const SwigluLora& lora) {
  if (N == 0) return;
  matmul_nt(g, x, w1, N, F, C, false);
  matmul_nt(u, x, w3, N, F, C, false);
  if (lora.w1) lora_forward(g, x, *lora.w1, N);
  if (lora.w3) lora_forward(u, x, *lora.w3, N);
  const size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) act[i] = g[i] * vsigmoid(g[i]) * u[i];
  matmul_nt(y, act, w2, N, C, F, false);
  if (lora.w2) lora_forward(y, act, *lora.w2, N);
}

void swiglu_backward(float* dx, float* dw1, float* dw3, float* dw2, const float* dy, const float* g,
                     const float* u, float* act, float* dg, float* du, const float* x, const float* w1,
                     const float* w3, const float* w2, int N, int C, int F, const GradSink& sink,
                     const SwigluLora& lora) {
  if (N == 0) return;
  const size_t n = (size_t)N * F;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) act[i] = g[i] * vsigmoid(g[i]) * u[i];
  sink.linear(dw2, dy, act, N, C, F);
  if (lora.w2) lora_backward_weights(dy, act, *lora.w2, N);
  float* dact = act;  // act is no longer needed once dw2 (and W2's adapter gradient) is formed
  matmul_nn(dact, dy, w2, N, F, C, false);
  if (lora.w2) lora_backward_input(dact, *lora.w2, N);
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i], ui = u[i], s = vsigmoid(gi);
    const float silu = gi * s;
    dg[i] = dact[i] * ui * s * (1.0f + gi * (1.0f - s));
    du[i] = dact[i] * silu;
  }
  sink.linear(dw1, dg, x, N, F, C);
  sink.linear(dw3, du, x, N, F, C);
  matmul_nn(dx, dg, w1, N, C, F, false);
  matmul_nn(dx, du, w3, N, C, F, true);
  if (lora.w1) lora_backward(dx, dg, x, *lora.w1, N);
  if (lora.w3) lora_backward(dx, du, x, *lora.w3, N);
}

float cross_entropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float scale) {
  double total = 0;
  std::vector<float> loss(N);
  const float k = scale / N;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    float* l = logits + (size_t)t * V;
    const float target_logit = l[targets[t]];
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int i = 0; i < V; ++i) mx = std::max(mx, l[i]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < V; ++i) {
      l[i] = vexp(l[i] - mx);
      sum += l[i];
    }
    loss[t] = std::log(sum) - (target_logit - mx);
    const float f = k / sum;
#pragma omp simd
    for (int i = 0; i < V; ++i) l[i] *= f;
    l[targets[t]] -= k;
  }
  for (int t = 0; t < N; ++t) total += loss[t];
  return static_cast<float>(total / N);
}

}  // namespace pcmoe
