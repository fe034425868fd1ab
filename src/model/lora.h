// LoRA adapters (Hu et al., arXiv 2106.09685) on chosen linear maps of the model. The base
// weight W [out,in] stays frozen; the map becomes y = x Wᵀ + s·(x Aᵀ) Bᵀ with A [r,in],
// B [out,r] and s = alpha / r. A starts N(0, 1/in) (seeded), B at zero, so an adapted model
// starts exactly at its base.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "tensor/buffer.h"

namespace pcmoe {

struct LoraSpec {
  int rank = 8;
  float alpha = 16.0f;
  // Which matrices get adapters: "wq", "wk", "wv", "wo" (attention), "router", "experts"
  // (w1, w3, w2 of every expert), "mlp" (w1, w3, w2 of the dense layers).
  std::vector<std::string> targets = {"wq", "wk", "wv", "wo"};
};
const std::vector<std::string>& lora_target_names();
// The adapters' tensors for `cfg` ("<W>.lora_a" [r,in], "<W>.lora_b" [out,r] per adapted W, in
// the model's layout order). Throws std::runtime_error for a bad spec: rank < 1, alpha <= 0, an
// unknown or repeated target, targets that name no matrix, a rank above min(out, in) of a matrix.
std::vector<ParamTensor> lora_layout(const ModelConfig& cfg, const LoraSpec& spec);

// One adapted map. `t` is scratch of [rows, r] floats shared by all maps of a model (each
// forward or backward call uses it only until it returns, except as noted below).
struct LoraMap {
  const float *A, *B;
  float *dA, *dB;
  int out, in, r;
  float scale;
  float* t;
};

// y[N,out] += s·(x Aᵀ) Bᵀ, x [N,in].
void lora_forward(float* y, const float* x, const LoraMap& m, int N);
// dB += s·dyᵀ (x Aᵀ), dA += s·(dy B)ᵀ x; leaves u = s·dy B [N,r] in m.t for lora_backward_input.
void lora_backward_weights(const float* dy, const float* x, const LoraMap& m, int N);
// dx[N,in] += u A with u from the last lora_backward_weights of this map.
void lora_backward_input(float* dx, const LoraMap& m, int N);
// Both, when dx is ready before the weights' part is needed.
void lora_backward(float* dx, const float* dy, const float* x, const LoraMap& m, int N);

class LoraAdapters {
 public:
  // Adapters on every matrix of `cfg` that spec.targets names. max_rows: the most rows one
  // adapted map sees in a call (a micro-batch's tokens, or its routed rows at a MoE layer).
  // Throws std::runtime_error for an unknown target or a rank above min(out, in) of a matrix.
  LoraAdapters(const ModelConfig& cfg, const LoraSpec& spec, int max_rows);
  LoraAdapters(const LoraAdapters&) = delete;
  LoraAdapters& operator=(const LoraAdapters&) = delete;

  // A and B of every adapted matrix W, named "<W>.lora_a" and "<W>.lora_b", in layout order.
  ParamSet& params() { return params_; }
  const ParamSet& params() const { return params_; }
  void init(uint64_t seed);
  // The adapter of base matrix `name`, or nullptr when it has none.
  const LoraMap* map(const std::string& name) const;
  float scale() const { return scale_; }
  size_t scratch_bytes() const { return scratch_.bytes(); }
  // W += s·B A for every adapted W of `base` (for export: the merged model needs no adapters).
  void merge_into(ParamSet& base) const;

 private:
  float scale_;
  ParamSet params_;
  std::unordered_map<std::string, LoraMap> maps_;
  AlignedBuffer scratch_;
};

}  // namespace pcmoe
