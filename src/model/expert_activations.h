// What an expert backend keeps of an MoE layer's forward for its backward, and its scratch,
// planned in one arena for at most `max_rows` routed rows per MoE layer. Both backends that run
// SwiGLU experts in this process use it: LocalExperts (a model's or a host's experts) and the
// weights exchange's data owner (collab/weights_turn.h), so the two plan the same bytes.
#pragma once
#include <cstddef>
#include <vector>

#include "model/config.h"
#include "tensor/buffer.h"

namespace pcmoe {

class ExpertActivations {
 public:
  // per_unit plans what DP-SGD's two backward passes need (the experts' inputs stay intact
  // through backward); keep_inputs keeps them intact too, without DP-SGD's buffers.
  ExpertActivations(const ModelConfig& cfg, int max_rows, bool per_unit, bool keep_inputs);

  struct Saved {  // per MoE layer, what backward needs
    float* x;     // [max_rows, C]
    float* g;     // [max_rows, F]
    float* u;     // [max_rows, F]
    std::vector<int> offsets;  // of the last forward
    // DP-SGD (per_unit): the output gradients and units of the last backward_unit_norms
    float* dy = nullptr;  // [max_rows, C]
    int* unit = nullptr;  // [max_rows]
    int n_units = 0;
  };
  std::vector<Saved> saved;  // indexed by layer (unused for dense layers)
  float* act = nullptr;      // [max_rows, F] scratch
  float *dg = nullptr, *du = nullptr;  // [max_rows, F]; null: backward overwrites the saved g, u
  float* dx = nullptr;                 // [max_rows, C] per_unit: the discarded dx of pass 2
  float* norm_scratch = nullptr;       // per_unit: GradSink scratch
  size_t norm_scratch_floats = 0;

  // Throws std::logic_error unless `offsets` are those of layer's last forward.
  void check_rows(int layer, const int* offsets) const;
  size_t bytes() const { return buffer_.bytes(); }

 private:
  int n_experts_;
  AlignedBuffer buffer_;
};

}  // namespace pcmoe
