#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "tensor/gemm.h"

namespace pcmoe {
namespace {

void scale_rows(float* t, size_t n, float s) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (size_t i = 0; i < n; ++i) t[i] *= s;
}

}  // namespace

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"wq", "wk", "wv", "wo", "router", "experts", "mlp"};
  return names;
}

void lora_forward(float* y, const float* x, const LoraMap& m, int N) {
  if (N == 0) return;
  matmul_nt(m.t, x, m.A, N, m.r, m.in, false);
  scale_rows(m.t, (size_t)N * m.r, m.scale);
  matmul_nt(y, m.t, m.B, N, m.out, m.r, true);
}

void lora_backward_weights(const float* dy, const float* x, const LoraMap& m, int N) {
  if (N == 0) return;
  // t = x Aᵀ is recomputed rather than kept from forward: r floats per row are cheap to redo.
  matmul_nt(m.t, x, m.A, N, m.r, m.in, false);
  scale_rows(m.t, (size_t)N * m.r, m.scale);
  matmul_tn(m.dB, dy, m.t, m.out, m.r, N, true);
  matmul_nn(m.t, dy, m.B, N, m.r, m.out, false);
  scale_rows(m.t, (size_t)N * m.r, m.scale);
  matmul_tn(m.dA, m.t, x, m.r, m.in, N, true);
}

void lora_backward_input(float* dx, const LoraMap& m, int N) {
  if (N == 0) return;
  matmul_nn(dx, m.t, m.A, N, m.in, m.r, true);
}

void lora_backward(float* dx, const float* dy, const float* x, const LoraMap& m, int N) {
  lora_backward_weights(dy, x, m, N);
  lora_backward_input(dx, m, N);
}

namespace {

// The base matrices `targets` name, in the model's layout order.
std::vector<ParamTensor> adapted(const ModelConfig& cfg, const std::vector<std::string>& targets) {
  auto wants = [&](const std::string& t) { return std::find(targets.begin(), targets.end(), t) != targets.end(); };
  std::vector<ParamTensor> out;
  for (const ParamTensor& t : param_layout(cfg, ParamSelection{})) {
    if (t.shape.size() != 2 || t.name.rfind("layers.", 0) != 0) continue;
    const std::string leaf = t.name.substr(t.name.rfind('.') + 1);
    const bool expert = t.name.find(".experts.") != std::string::npos, mlp = t.name.find(".mlp.") != std::string::npos;
    if ((expert && wants("experts")) || (mlp && wants("mlp")) || (!expert && !mlp && wants(leaf))) out.push_back(t);
  }
  return out;
}

}  // namespace

std::vector<ParamTensor> lora_layout(const ModelConfig& cfg, const LoraSpec& spec) {
  if (spec.rank < 1) throw std::runtime_error("LoRA rank must be >= 1, got " + std::to_string(spec.rank));
  if (!(spec.alpha > 0)) throw std::runtime_error("LoRA alpha must be > 0");
  if (spec.targets.empty()) throw std::runtime_error("LoRA needs at least one target");
  for (size_t i = 0; i < spec.targets.size(); ++i) {
    const std::string& t = spec.targets[i];
    const auto& known = lora_target_names();
    if (std::find(known.begin(), known.end(), t) == known.end())
      throw std::runtime_error("unknown LoRA target '" + t + "' (known: wq, wk, wv, wo, router, experts, mlp)");
    if (std::find(spec.targets.begin(), spec.targets.begin() + i, t) != spec.targets.begin() + i)
      throw std::runtime_error("LoRA target '" + t + "' is named twice");
  }
  std::vector<ParamTensor> out;
  for (const ParamTensor& w : adapted(cfg, spec.targets)) {
    const int64_t rows = w.shape[0], cols = w.shape[1];
    if (spec.rank > std::min(rows, cols))
      throw std::runtime_error("LoRA rank " + std::to_string(spec.rank) + " exceeds the rank of " + w.name + " [" +
                               std::to_string(rows) + " x " + std::to_string(cols) + "], at most " +
                               std::to_string(std::min(rows, cols)));
    out.push_back({w.name + ".lora_a", {spec.rank, cols}, 0, 0, true, 1.0f / std::sqrt((float)cols)});
    out.push_back({w.name + ".lora_b", {rows, spec.rank}, 0, 0, true, 0.0f});
  }
  if (out.empty()) throw std::runtime_error("the LoRA targets name no matrix of this model");
  return out;
}

LoraAdapters::LoraAdapters(const ModelConfig& cfg, const LoraSpec& spec, int max_rows)
    : scale_(spec.alpha / spec.rank), params_(lora_layout(cfg, spec)),
      scratch_((size_t)max_rows * spec.rank * sizeof(float)) {
  const auto& ts = params_.tensors();
  for (size_t i = 0; i < ts.size(); i += 2) {
    const ParamTensor &a = ts[i], &b = ts[i + 1];
    const std::string base = a.name.substr(0, a.name.size() - std::string(".lora_a").size());
    maps_[base] = LoraMap{params_.values() + a.offset, params_.values() + b.offset, params_.grads() + a.offset,
                          params_.grads() + b.offset, (int)b.shape[0], (int)a.shape[1], spec.rank, scale_,
                          scratch_.floats()};
  }
}

void LoraAdapters::init(uint64_t seed) {
  params_.init(seed);
  // init_std 0 means "ones" for norm weights; B starts at zero instead.
  for (const ParamTensor& t : params_.tensors())
    if (t.name.ends_with(".lora_b")) std::fill_n(params_.values() + t.offset, t.numel, 0.0f);
}

const LoraMap* LoraAdapters::map(const std::string& name) const {
  auto it = maps_.find(name);
  return it == maps_.end() ? nullptr : &it->second;
}

void LoraAdapters::merge_into(ParamSet& base) const {
  for (const auto& [name, m] : maps_) {
    float* W = base.value(name);
    for (int i = 0; i < m.out; ++i)
      for (int j = 0; j < m.in; ++j) {
        float acc = 0;
        for (int k = 0; k < m.r; ++k) acc += m.B[(size_t)i * m.r + k] * m.A[(size_t)k * m.in + j];
        W[(size_t)i * m.in + j] += m.scale * acc;
      }
  }
}

}  // namespace pcmoe
