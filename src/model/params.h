// Named trainable tensors laid out in one block of values and one block of gradients.
// The layout is a pure function of the config and of which experts live here, so a party can
// hold its backbone without the experts and an expert host the experts alone.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"
#include "tensor/buffer.h"

namespace pcmoe {

struct ParamTensor {
  std::string name;  // checkpoint name, see docs/model.md
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats, into the value and gradient blocks
  size_t numel = 0;
  bool decay = false;   // AdamW weight decay applies (matrices, not norm weights)
  float init_std = 0;   // 0: initialised to one (norm weights)
};

// Which parts of the model a ParamSet holds.
struct ParamSelection {
  bool backbone = true;                                          // everything but the experts
  std::function<bool(int layer, int expert)> expert = [](int, int) { return true; };
};

// Everything but the experts (a party's backbone).
ParamSelection backbone_selection();

// The tensors a selection holds, in the canonical (checkpoint) order, with offsets into one block.
std::vector<ParamTensor> param_layout(const ModelConfig& cfg, const ParamSelection& selection);
// Floats of the block that holds `layout` (each tensor padded to 16 floats).
size_t layout_numel(const std::vector<ParamTensor>& layout);

class ParamSet {
 public:
  // with_grads = false: frozen weights (LoRA's base) hold no gradient block; grads() is null.
  ParamSet(const ModelConfig& cfg, const ParamSelection& selection, bool with_grads = true);
  // Any other named tensors (LoRA adapters): names, shapes, decay and init_std are taken from
  // `tensors`; offsets and sizes are laid out here as for the model.
  explicit ParamSet(std::vector<ParamTensor> tensors, bool with_grads = true);
  // The tensors and values of `values_of` (read through it: it must outlive this set) with a
  // gradient block of this set's own: one caller's gradients of an expert shard whose weights it
  // shares (collab's concurrent rounds keep each party's contribution apart).
  struct SharedValues {};
  ParamSet(const ParamSet& values_of, SharedValues);
  ParamSet(const ParamSet&) = delete;
  ParamSet& operator=(const ParamSet&) = delete;

  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t numel() const { return numel_; }
  float* values() const { return shared_ ? shared_->values() : values_.floats(); }
  float* grads() const { return grads_.floats(); }
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  const ParamTensor& info(const std::string& name) const;  // throws if absent
  float* value(const std::string& name) const { return values() + info(name).offset; }
  float* grad(const std::string& name) const { return grads() ? grads() + info(name).offset : nullptr; }

  // Seeded init per docs/model.md. Each tensor draws from its own stream keyed by (seed, name),
  // so a tensor's initial values do not depend on which other tensors this set holds.
  void init(uint64_t seed);
  void zero_grads();
  // Copies the values of every tensor of `part` into this set's tensor of the same name (which
  // must exist): a whole model assembled from a backbone and expert shards.
  void copy_values_from(const ParamSet& part);

 private:
  std::vector<ParamTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  size_t numel_ = 0;
  AlignedBuffer values_, grads_;
  const ParamSet* shared_ = nullptr;  // whose values these are (SharedValues), else null
};

// Checkpoint names.
std::string layer_param(int layer, const char* what);
std::string expert_param(int layer, int expert, const char* what);
std::string dense_param(int layer, const char* what);

// Every gradient of `params` times `coef` (clipping, and DP-SGD's division by the expected batch).
void scale_grads(ParamSet& params, float coef);
// dst's gradients += coef x src's, element by element (the two of one layout).
void add_scaled_grads(ParamSet& dst, const ParamSet& src, float coef);

}  // namespace pcmoe
