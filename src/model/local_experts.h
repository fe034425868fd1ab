// Experts computed in this process, with their weights in a ParamSet and their activations in
// an arena planned for at most `max_rows` routed rows per MoE layer.
#pragma once
#include "model/expert_activations.h"
#include "model/expert_backend.h"
#include "model/layers.h"
#include "model/params.h"
#include "model/per_unit.h"

namespace pcmoe {

class LocalExperts final : public ExpertBackend {
 public:
  // params must hold every expert of every MoE layer that will be called. per_unit plans what
  // DP-SGD's two backward passes need (the experts' inputs stay intact through backward);
  // keep_inputs keeps them intact too (an expert host whose reply may still fail after a
  // backward keeps the forward that backward needs).
  LocalExperts(const ModelConfig& cfg, ParamSet& params, int max_rows, bool per_unit = false,
               bool keep_inputs = false);
  void forward(int layer, const int* offsets, const float* x, float* y) override;
  void backward(int layer, const int* offsets, const float* dy, float* dx) override;
  void backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit, int n_units,
                           float* dx, double* unit_sq) override;
  void add_clipped_grads(int layer, const float* factor) override;
  // LoRA: experts' matrices that `lora` adapts gain their adapters; backward() then forms only
  // the adapters' gradients (the experts' weights are frozen). Null: plain experts.
  void set_lora(const LoraAdapters* lora) { lora_ = lora; }
  size_t activation_bytes() const { return acts_.bytes(); }
  int max_rows() const { return max_rows_; }

 private:
  void expert_backward(int layer, int e, const float* dy, float* dx, const GradSink& sink);
  SwigluLora adapters(int layer, int e) const;

  const ModelConfig cfg_;
  ParamSet& params_;
  int max_rows_;
  bool per_unit_;
  const LoraAdapters* lora_ = nullptr;
  ExpertActivations acts_;
};

}  // namespace pcmoe
