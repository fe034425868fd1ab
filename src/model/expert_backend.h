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

  // DP-SGD, first backward pass (docs/privacy.md): as backward, but adds no weight gradient;
  // instead adds to unit_sq[u] the squared norm of privacy unit u's gradient of this layer's
  // experts. unit[r] in 0..n_units-1 is row r's unit (an index in the batch, never a token id);
  // within one expert a unit's rows are contiguous. Keeps what add_clipped_grads needs.
  virtual void backward_unit_norms(int layer, const int* offsets, const float* dy, const int* unit,
                                   int n_units, float* dx, double* unit_sq) = 0;
  // DP-SGD, second pass: adds Σ_u factor[u] · (unit u's gradient of this layer's experts) to
  // the experts' gradients, for the rows of the last backward_unit_norms of `layer`.
  virtual void add_clipped_grads(int layer, const float* factor) = 0;
};

}  // namespace pcmoe
