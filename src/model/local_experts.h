// Experts computed in this process, with their weights in a ParamSet and their activations in
// an arena planned for at most `max_rows` routed rows per MoE layer.
#pragma once
#include <vector>

#include "model/expert_backend.h"
#include "model/params.h"
#include "tensor/buffer.h"

namespace pcmoe {

class LocalExperts final : public ExpertBackend {
 public:
  // params must hold every expert of every MoE layer that will be called.
  LocalExperts(const ModelConfig& cfg, ParamSet& params, int max_rows);
  void forward(int layer, const int* offsets, const float* x, float* y) override;
  void backward(int layer, const int* offsets, const float* dy, float* dx) override;
  size_t activation_bytes() const { return acts_.bytes(); }
  int max_rows() const { return max_rows_; }

 private:
  struct Saved {  // per MoE layer, what backward needs
    float* x;     // [max_rows, C]
    float* g;     // [max_rows, F]
    float* u;     // [max_rows, F]
  };
  const ModelConfig cfg_;
  ParamSet& params_;
  int max_rows_;
  std::vector<Saved> saved_;  // indexed by layer (unused for dense layers)
  float* scratch_ = nullptr;  // [max_rows, F]
  AlignedBuffer acts_;
};

}  // namespace pcmoe
