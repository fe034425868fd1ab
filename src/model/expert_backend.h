// The one door between an MoE layer and its experts. The layer groups its routed tokens by
// expert and hands them over; where the experts run (this process, another party) is the
// backend's business. Nothing else crosses: no token ids, no router logits, no gate weights.
#pragma once

namespace pcmoe {

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;
  // x[rows, d_model]: the routed hidden states of MoE layer `layer`, grouped by expert: rows
  // offsets[e] .. offsets[e+1]-1 go to expert e (offsets has n_experts + 1 entries).
  // Writes y (same shape) = each row through its expert. Keeps what backward needs.
  virtual void forward(int layer, const int* offsets, const float* x, float* y) = 0;
  // dy: gradient of y from the same forward; writes dx, the gradient of x, and adds the
  // experts' weight gradients to their accumulators.
  virtual void backward(int layer, const int* offsets, const float* dy, float* dx) = 0;
};

}  // namespace pcmoe
