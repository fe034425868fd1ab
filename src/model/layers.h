// Every layer as a forward and a backward function over flat row-major arrays (N token rows).
// Backward functions ADD into parameter gradients (so micro-batches accumulate) and, where noted,
// into input gradients (so residual branches sum).
#pragma once
#include <cstdint>

#include "model/lora.h"
#include "model/per_unit.h"

namespace pcmoe {

// out[N,C] = wte[tokens]
void embedding_forward(float* out, const int32_t* tokens, const float* wte, int N, int C);
// dwte[tokens] += dout, through the sink (rows processed in token order: deterministic)
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int N, int C,
                        const GradSink& sink = {});

// out = x / sqrt(mean(x²) + eps) * w; keeps rstd[N] for backward.
void rmsnorm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C, float eps);
// dx += ..., dw += ... (through the sink)
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int N, int C, const GradSink& sink = {});

// Rotate-half RoPE in place on x[B*T, heads*D], positions 0..T-1 in each sequence.
// inverse = true applies the transposed rotation (the backward of the forward rotation).
void rope_apply(float* x, int B, int T, int heads, int D, float theta, bool inverse);

// Causal attention with grouped-query heads. q[N,H*D], k,v[N,KV*D] -> out[N,H*D];
// keeps the probabilities att[B,H,T,T] (upper triangle unused).
void attention_forward(float* out, float* att, const float* q, const float* k, const float* v,
                       int B, int T, int H, int KV, int D);
// Overwrites dq, dk, dv.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* att,
                        const float* q, const float* k, const float* v, int B, int T, int H, int KV, int D);

// LoRA adapters of a SwiGLU's three matrices (null: not adapted).
struct SwigluLora {
  const LoraMap *w1 = nullptr, *w3 = nullptr, *w2 = nullptr;
};

// SwiGLU MLP y = (silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ. Keeps g = x W1ᵀ and u = x W3ᵀ [N,F]; `act` [N,F]
// is scratch. With adapters each x Wᵀ gains its LoRA term.
void swiglu_forward(float* y, float* g, float* u, float* act, const float* x, const float* w1,
                    const float* w3, const float* w2, int N, int C, int F, const SwigluLora& lora = {});
// dx = (overwritten), dw1/dw3/dw2 += ... through the sink. act, dg, du are [N,F] scratch. dg and
// du may alias g and u (which are then consumed); kept apart, a second backward over the same
// forward (DP-SGD's second pass) is possible.
void swiglu_backward(float* dx, float* dw1, float* dw3, float* dw2, const float* dy, const float* g,
                     const float* u, float* act, float* dg, float* du, const float* x, const float* w1,
                     const float* w3, const float* w2, int N, int C, int F, const GradSink& sink = {},
                     const SwigluLora& lora = {});

// Row-wise softmax cross-entropy. On entry logits[N,V]; on exit it holds the gradient of
// scale * mean_t CE with respect to the logits. Returns the mean CE.
float cross_entropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float scale);

}  // namespace pcmoe
