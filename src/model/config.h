// The model's shape: the one source of truth every buffer size is derived from.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include "tensor/dtype.h"

namespace pcmoe {

struct ModelConfig {
  int vocab_size = 4096;
  int d_model = 128;
  int n_layers = 4;
  int n_heads = 4;
  int n_kv_heads = 2;
  int d_ff = 256;         // hidden size of each expert
  int d_ff_dense = 512;   // hidden size of the dense SwiGLU between MoE layers
  int n_experts = 8;
  int top_k = 2;
  int moe_every = 1;      // layer l is MoE when (l + 1) % moe_every == 0
  int seq_len = 128;
  bool renormalize = true;     // renormalise the top-k gate weights to sum to one
  bool tie_embeddings = true;  // LM head shares the token embedding
  bool qk_norm = false;        // RMSNorm on the whole q and k projections before RoPE (OLMoE)
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  float aux_loss_weight = 0.01f;  // Switch load-balancing loss, per MoE layer
  float z_loss_weight = 0.001f;   // router z-loss, per MoE layer
  // The inputs of matrix products: fp32 (exact against the reference) or bf16 (fp32
  // accumulation; weights, optimizer state, norms, softmax, router and losses stay fp32).
  Dtype compute_dtype = Dtype::kF32;

  int head_dim() const { return d_model / n_heads; }
  bool is_moe(int layer) const { return (layer + 1) % moe_every == 0; }
  int n_moe_layers() const { return n_layers / moe_every; }
  // Throws std::runtime_error naming the first inconsistent field.
  void validate() const;
};

ModelConfig model_config_from_json(const nlohmann::json& j);  // strict, then validate()
nlohmann::json to_json(const ModelConfig& c);
// to_json without compute_dtype: what a checkpoint's weights must match (a model trained in one
// compute dtype can go on in the other).
nlohmann::json architecture_json(const ModelConfig& c);

}  // namespace pcmoe
