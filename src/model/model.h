// The decoder-only MoE transformer of docs/model.md: forward and backward over one planned
// activation block. Weights live in a ParamSet (the backbone, and the experts when they are
// local); experts are reached only through an ExpertBackend.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/expert_backend.h"
#include "model/layers.h"
#include "model/moe.h"
#include "model/params.h"
#include "tensor/buffer.h"

namespace pcmoe {

struct LossStats {
  float ce = 0;    // mean cross-entropy
  float aux = 0;   // sum over MoE layers of L_aux
  float z = 0;     // sum over MoE layers of L_z
  float total = 0; // ce + aux_loss_weight * aux + z_loss_weight * z (the training objective)
};

class Model {
 public:
  // `max_batch` sequences of cfg.seq_len tokens at most per call. per_unit plans what DP-SGD's
  // per-unit passes need (backward_unit_norms, backward_clipped).
  Model(const ModelConfig& cfg, ParamSet& params, ExpertBackend& experts, int max_batch, bool per_unit = false);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // windows[batch, T+1]: inputs are the first T tokens of each row, targets the last T.
  // Keeps what backward() needs; backward() adds grad_scale * d(total)/d(params) into the
  // gradients (and sends the expert part through the backend).
  LossStats forward(const int32_t* windows, int batch, float grad_scale);
  void backward();

  // DP-SGD (docs/privacy.md). unit_of_seq[b] in 0..n_units-1 is the privacy unit of sequence b
  // of the last forward; a unit's sequences are adjacent. Parameters fall into clip groups:
  // group l holds layer l's tensors (its experts included), group n_layers the embedding, final
  // norm and head.
  int clip_groups() const { return cfg_.n_layers + 1; }
  // Pass 1: unit_sq[g * n_units + u] += squared norm of unit u's gradient of group g's tensors.
  // No gradient is touched.
  void backward_unit_norms(const int* unit_of_seq, int n_units, double* unit_sq);
  // Pass 2 (after pass 1 over the same forward): gradients += Σ_u factor[g * n_units + u] ·
  // (unit u's gradient of group g's tensors).
  void backward_clipped(const int* unit_of_seq, int n_units, const float* factor);
  // LoRA: the maps `lora` adapts gain their adapters, and backward() freezes the base: it forms
  // the adapters' gradients (in lora's ParamSet) and no gradient of params. Null: plain model.
  // The expert backend is told separately (LocalExperts::set_lora).
  void set_lora(const LoraAdapters* lora) { lora_ = lora; }
  // Switch load-balancing loss over each sequence (per privacy unit) instead of the whole batch.
  void set_aux_per_sequence(bool on) { aux_per_sequence_ = on; }
  // Inference: logits [batch, T, V] of inputs[batch, T] (positions past a sequence's real end
  // may hold anything: attention is causal).
  const float* logits(const int32_t* inputs, int batch);

  const ModelConfig& config() const { return cfg_; }
  // The routing of MoE layer `layer` in the last forward (tests and audits read it).
  const MoeSaved& moe_saved(int layer) const { return layers_[layer].moe; }
  // The token rows of the last forward: batch x seq_len inputs and their targets.
  const int32_t* last_inputs() const { return inputs_; }
  const int32_t* last_targets() const { return targets_; }
  int last_rows() const { return batch_ * cfg_.seq_len; }
  int max_batch() const { return max_batch_; }
  size_t activation_bytes() const { return acts_.bytes(); }
  size_t scratch_bytes() const { return scratch_.bytes(); }

 private:
  struct LayerActs {
    float *rstd1, *h1, *q, *k, *v, *att, *ao, *xmid, *rstd2, *h2;
    float *q_raw = nullptr, *k_raw = nullptr, *rstd_q = nullptr, *rstd_k = nullptr;  // qk_norm
    float *g, *u;   // dense layers
    MoeSaved moe;   // MoE layers
    float* moe_dx = nullptr;  // per_unit MoE layers: the experts' input gradients of pass 1
  };
  void forward_body(int batch);
  MoeShape moe_shape(int batch) const;
  void backward_pass(GradSink& sink);
  void set_token_units(const int* unit_of_seq);
  void tied_embedding_unit_norms(const GradSink& sink);
  const LoraMap* adapter(const std::string& name) const { return lora_ ? lora_->map(name) : nullptr; }
  SwigluLora dense_adapters(int layer) const;

  const ModelConfig cfg_;
  ParamSet& params_;
  ExpertBackend& experts_;
  int max_batch_;
  bool per_unit_;
  bool aux_per_sequence_ = false;
  const LoraAdapters* lora_ = nullptr;
  int batch_ = 0;        // rows of the last forward
  float grad_scale_ = 0;
  std::vector<float*> resid_;  // n_layers + 1 residual streams [N,C]
  std::vector<LayerActs> layers_;
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  float *rstdf_ = nullptr, *hf_ = nullptr, *logits_ = nullptr;
  // scratch, shared across layers
  float *dresid_ = nullptr, *dh_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr,
        *dao_ = nullptr, *branch_ = nullptr, *act_ = nullptr;
  float *dq_raw_ = nullptr, *dk_raw_ = nullptr;  // qk_norm: gradients before the q/k norms
  float *dg_ = nullptr, *du_ = nullptr;  // per_unit dense layers (otherwise g and u are consumed)
  float* unit_scratch_ = nullptr;        // per_unit: GradSink scratch
  size_t unit_scratch_floats_ = 0;
  int* token_unit_ = nullptr;            // per_unit: the unit of each token row
  MoeScratch moe_scratch_{};
  AlignedBuffer acts_, scratch_;
};

}  // namespace pcmoe
