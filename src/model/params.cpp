#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "tensor/rng.h"

namespace pcmoe {

std::string layer_param(int layer, const char* what) {
  return "layers." + std::to_string(layer) + "." + what;
}
std::string expert_param(int layer, int expert, const char* what) {
  return "layers." + std::to_string(layer) + ".experts." + std::to_string(expert) + "." + what;
}
std::string dense_param(int layer, const char* what) {
  return "layers." + std::to_string(layer) + ".mlp." + what;
}

std::vector<ParamTensor> param_layout(const ModelConfig& cfg, const ParamSelection& sel) {
  std::vector<ParamTensor> out;
  size_t numel = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay, float init_std) {
    ParamTensor t{std::move(name), std::move(shape), numel, 1, decay, init_std};
    for (int64_t d : t.shape) t.numel *= static_cast<size_t>(d);
    numel += (t.numel + 15) / 16 * 16;  // each tensor starts on a 16-float boundary
    out.push_back(std::move(t));
  };
  const int64_t C = cfg.d_model, V = cfg.vocab_size, D = cfg.head_dim();
  const int64_t HD = cfg.n_heads * D, KVD = cfg.n_kv_heads * D;
  const float std_in = 0.02f, std_out = 0.02f / std::sqrt(2.0f * cfg.n_layers);
  if (sel.backbone) add("wte", {V, C}, true, std_in);
  for (int l = 0; l < cfg.n_layers; ++l) {
    if (sel.backbone) {
      add(layer_param(l, "attn_norm"), {C}, false, 0);
      add(layer_param(l, "wq"), {HD, C}, true, std_in);
      add(layer_param(l, "wk"), {KVD, C}, true, std_in);
      add(layer_param(l, "wv"), {KVD, C}, true, std_in);
      if (cfg.qk_norm) {
        add(layer_param(l, "q_norm"), {HD}, false, 0);
        add(layer_param(l, "k_norm"), {KVD}, false, 0);
      }
      add(layer_param(l, "wo"), {C, HD}, true, std_out);
      add(layer_param(l, "ffn_norm"), {C}, false, 0);
    }
    if (cfg.is_moe(l)) {
      if (sel.backbone) add(layer_param(l, "router"), {cfg.n_experts, C}, true, std_in);
      for (int e = 0; e < cfg.n_experts; ++e) {
        if (!sel.expert(l, e)) continue;
        add(expert_param(l, e, "w1"), {cfg.d_ff, C}, true, std_in);
        add(expert_param(l, e, "w3"), {cfg.d_ff, C}, true, std_in);
        add(expert_param(l, e, "w2"), {C, cfg.d_ff}, true, std_out);
      }
    } else if (sel.backbone) {
      add(dense_param(l, "w1"), {cfg.d_ff_dense, C}, true, std_in);
      add(dense_param(l, "w3"), {cfg.d_ff_dense, C}, true, std_in);
      add(dense_param(l, "w2"), {C, cfg.d_ff_dense}, true, std_out);
    }
  }
  if (sel.backbone) {
    add("final_norm", {C}, false, 0);
    if (!cfg.tie_embeddings) add("head", {V, C}, true, std_in);
  }
  return out;
}

ParamSelection backbone_selection() {
  ParamSelection sel;
  sel.expert = [](int, int) { return false; };
  return sel;
}

size_t layout_numel(const std::vector<ParamTensor>& layout) {
  return layout.empty() ? 0 : (layout.back().offset + layout.back().numel + 15) / 16 * 16;
}

ParamSet::ParamSet(const ModelConfig& cfg, const ParamSelection& sel, bool with_grads)
    : ParamSet(param_layout(cfg, sel), with_grads) {}

ParamSet::ParamSet(std::vector<ParamTensor> tensors, bool with_grads) : tensors_(std::move(tensors)) {
  size_t offset = 0;
  for (ParamTensor& t : tensors_) {
    t.offset = offset;
    t.numel = 1;
    for (int64_t d : t.shape) t.numel *= static_cast<size_t>(d);
    offset += (t.numel + 15) / 16 * 16;
  }
  numel_ = layout_numel(tensors_);
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  values_ = AlignedBuffer(numel_ * sizeof(float));
  if (with_grads) grads_ = AlignedBuffer(numel_ * sizeof(float));
}

ParamSet::ParamSet(const ParamSet& values_of, SharedValues)
    : tensors_(values_of.tensors_), index_(values_of.index_), numel_(values_of.numel_),
      grads_(numel_ * sizeof(float)), shared_(&values_of) {}

const ParamTensor& ParamSet::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw std::runtime_error("no parameter named '" + name + "'");
  return tensors_[it->second];
}

void ParamSet::init(uint64_t seed) {
  for (const ParamTensor& t : tensors_) {
    uint64_t key = seed;
    for (char ch : t.name) key = splitmix64(key ^ static_cast<unsigned char>(ch));
    Rng rng(key);
    float* p = values() + t.offset;
    for (size_t i = 0; i < t.numel; ++i)
      p[i] = t.init_std == 0 ? 1.0f : static_cast<float>(rng.normal() * t.init_std);
  }
}

void ParamSet::zero_grads() {
  if (grads()) std::memset(grads(), 0, numel_ * sizeof(float));
}

void ParamSet::copy_values_from(const ParamSet& part) {
  for (const ParamTensor& t : part.tensors()) std::copy_n(part.value(t.name), t.numel, value(t.name));
}

void scale_grads(ParamSet& params, float coef) {
  if (coef == 1.0f) return;
  float* g = params.grads();
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < params.numel(); ++i) g[i] *= coef;
}

void add_scaled_grads(ParamSet& dst, const ParamSet& src, float coef) {
  if (dst.numel() != src.numel()) throw std::logic_error("add_scaled_grads: the two sets differ in layout");
  float* d = dst.grads();
  const float* s = src.grads();
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < dst.numel(); ++i) d[i] += coef * s[i];
}

}  // namespace pcmoe
