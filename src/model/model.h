// The decoder-only MoE transformer of docs/model.md: forward and backward over one planned
// activation block. Weights live in a ParamSet (the backbone, and the experts when they are
// local); experts are reached only through an ExpertBackend.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/expert_backend.h"
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
  // `max_batch` sequences of cfg.seq_len tokens at most per call.
  Model(const ModelConfig& cfg, ParamSet& params, ExpertBackend& experts, int max_batch);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // windows[batch, T+1]: inputs are the first T tokens of each row, targets the last T.
  // Keeps what backward() needs; backward() adds grad_scale * d(total)/d(params) into the
  // gradients (and sends the expert part through the backend).
  LossStats forward(const int32_t* windows, int batch, float grad_scale);
  void backward();
  // Inference: logits [batch, T, V] of inputs[batch, T] (positions past a sequence's real end
  // may hold anything: attention is causal).
  const float* logits(const int32_t* inputs, int batch);

  const ModelConfig& config() const { return cfg_; }
  // The routing of MoE layer `layer` in the last forward (tests and audits read it).
  const MoeSaved& moe_saved(int layer) const { return layers_[layer].moe; }
  int max_batch() const { return max_batch_; }
  size_t activation_bytes() const { return acts_.bytes(); }
  size_t scratch_bytes() const { return scratch_.bytes(); }

 private:
  struct LayerActs {
    float *rstd1, *h1, *q, *k, *v, *att, *ao, *xmid, *rstd2, *h2;
    float *g, *u;   // dense layers
    MoeSaved moe;   // MoE layers
  };
  void forward_body(int batch);
  MoeShape moe_shape(int batch) const;

  const ModelConfig cfg_;
  ParamSet& params_;
  ExpertBackend& experts_;
  int max_batch_;
  int batch_ = 0;        // rows of the last forward
  float grad_scale_ = 0;
  std::vector<float*> resid_;  // n_layers + 1 residual streams [N,C]
  std::vector<LayerActs> layers_;
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  float *rstdf_ = nullptr, *hf_ = nullptr, *logits_ = nullptr;
  // scratch, shared across layers
  float *dresid_ = nullptr, *dh_ = nullptr, *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr,
        *dao_ = nullptr, *branch_ = nullptr, *act_ = nullptr;
  MoeScratch moe_scratch_{};
  AlignedBuffer acts_, scratch_;
};

}  // namespace pcmoe
