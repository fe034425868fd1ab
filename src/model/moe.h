// The MoE block: router -> softmax -> top-k -> group by expert -> ExpertBackend -> combine.
// Token-choice and dropless: every token reaches its k experts, so a layer routes exactly N*k
// rows and every buffer size is known from the config.
#pragma once
#include "model/expert_backend.h"
#include "model/lora.h"
#include "model/per_unit.h"
#include "tensor/arena.h"

namespace pcmoe {

struct MoeShape {
  int N;  // token rows
  int C;  // d_model
  int E;  // experts
  int K;  // top-k
  bool renormalize;
  int aux_group;  // rows per load-balancing group: N (the whole batch) or T (per sequence)
};

// What one MoE layer keeps from forward for backward.
struct MoeSaved {
  float* probs;   // [N,E] router softmax
  float* lse;     // [N] logsumexp of the router logits (z-loss)
  int* expert;    // [N,K] chosen experts, by descending probability, ties to the lower index
  float* gate;    // [N,K] combine weights
  int* row;       // [N,K] row of (token, choice) in the expert-grouped batch
  int* offsets;   // [E+1] expert e owns rows offsets[e] .. offsets[e+1]-1
  float* y;       // [N*K, C] expert outputs, grouped
  float aux;      // Switch load-balancing loss L_aux (mean over the aux groups)
  float z;        // router z-loss L_z
  void plan(Arena& a, const MoeShape& s);
};

// Buffers shared by all MoE layers (used within one call only).
struct MoeScratch {
  float* grouped_a;  // [N*K, C]
  float* grouped_b;  // [N*K, C]
  float* dlogits;    // [N,E]
  void plan(Arena& a, const MoeShape& s);
};

// out[N,C] = MoE(x). router [E,C], with its LoRA adapter when router_lora is set.
void moe_forward(float* out, MoeSaved& sv, MoeScratch& scratch, const float* x, const float* router,
                 ExpertBackend& experts, int layer, const MoeShape& s, const LoraMap* router_lora = nullptr);
// dx[N,C] is overwritten; drouter += ... (through the sink); the objective is <out, dout> +
// aux_weight * L_aux + z_weight * L_z (callers fold their loss scale into the weights and dout).
// With a per-unit sink (DP-SGD) the experts' part goes through backward_unit_norms (pass 1,
// which saves the experts' input gradients in dx_cache [N*K, C]) or add_clipped_grads (pass 2,
// which reuses them: the experts are not called again).
void moe_backward(float* dx, float* drouter, const float* dout, MoeSaved& sv, MoeScratch& scratch,
                  const float* x, const float* router, ExpertBackend& experts, int layer,
                  const MoeShape& s, float aux_weight, float z_weight, const GradSink& sink = {},
                  float* dx_cache = nullptr, const LoraMap* router_lora = nullptr);

}  // namespace pcmoe
