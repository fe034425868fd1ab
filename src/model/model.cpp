#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "model/layers.h"
#include "tensor/arena.h"
#include "tensor/gemm.h"

namespace pcmoe {

Model::Model(const ModelConfig& cfg, ParamSet& params, ExpertBackend& experts, int max_batch, bool per_unit)
    : cfg_(cfg), params_(params), experts_(experts), max_batch_(max_batch), per_unit_(per_unit),
      resid_(cfg.n_layers + 1), layers_(cfg.n_layers) {
  cfg_.validate();
  const size_t B = max_batch, T = cfg.seq_len, N = B * T, C = cfg.d_model, D = cfg.head_dim();
  const size_t HD = cfg.n_heads * D, KVD = cfg.n_kv_heads * D, H = cfg.n_heads;
  const MoeShape ms = moe_shape(max_batch);
  plan_and_place(acts_, [&](Arena& a) {
    inputs_ = a.take<int32_t>(N);
    targets_ = a.take<int32_t>(N);
    for (auto& r : resid_) r = a.take<float>(N * C);
    for (int l = 0; l < cfg.n_layers; ++l) {
      LayerActs& la = layers_[l];
      la.rstd1 = a.take<float>(N);
      la.h1 = a.take<float>(N * C);
      la.q = a.take<float>(N * HD);
      la.k = a.take<float>(N * KVD);
      la.v = a.take<float>(N * KVD);
      if (cfg.qk_norm) {
        la.q_raw = a.take<float>(N * HD);
        la.k_raw = a.take<float>(N * KVD);
        la.rstd_q = a.take<float>(N);
        la.rstd_k = a.take<float>(N);
      }
      la.att = a.take<float>(B * H * T * T);
      la.ao = a.take<float>(N * HD);
      la.xmid = a.take<float>(N * C);
      la.rstd2 = a.take<float>(N);
      la.h2 = a.take<float>(N * C);
      if (cfg.is_moe(l)) {
        la.moe.plan(a, ms);
        if (per_unit) la.moe_dx = a.take<float>(N * cfg.top_k * C);
      } else {
        la.g = a.take<float>(N * cfg.d_ff_dense);
        la.u = a.take<float>(N * cfg.d_ff_dense);
      }
    }
    rstdf_ = a.take<float>(N);
    hf_ = a.take<float>(N * C);
    logits_ = a.take<float>(N * cfg.vocab_size);
  });
  plan_and_place(scratch_, [&](Arena& a) {
    dresid_ = a.take<float>(N * C);
    dh_ = a.take<float>(N * C);
    dq_ = a.take<float>(N * HD);
    dk_ = a.take<float>(N * KVD);
    dv_ = a.take<float>(N * KVD);
    if (cfg.qk_norm) {
      dq_raw_ = a.take<float>(N * HD);
      dk_raw_ = a.take<float>(N * KVD);
    }
    dao_ = a.take<float>(N * HD);
    branch_ = a.take<float>(N * C);
    act_ = a.take<float>(N * cfg.d_ff_dense);
    if (cfg.n_moe_layers() > 0) moe_scratch_.plan(a, ms);
    if (per_unit) {
      const size_t V = cfg.vocab_size, E = cfg.n_experts, F = cfg.d_ff_dense;
      // The largest weight any unit's gradient is formed for (the head), or N rows of one operand.
      unit_scratch_floats_ = std::max({V * C, HD * C, KVD * C, F * C, E * C, N * C});
      unit_scratch_ = a.take<float>(unit_scratch_floats_);
      token_unit_ = a.take<int>(N);
      if (cfg.n_moe_layers() < cfg.n_layers) {
        dg_ = a.take<float>(N * F);
        du_ = a.take<float>(N * F);
      }
    }
  });
}

SwigluLora Model::dense_adapters(int l) const {
  return {adapter(dense_param(l, "w1")), adapter(dense_param(l, "w3")), adapter(dense_param(l, "w2"))};
}

MoeShape Model::moe_shape(int batch) const {
  const int N = batch * cfg_.seq_len;
  return {N, cfg_.d_model, cfg_.n_experts, cfg_.top_k, cfg_.renormalize, aux_per_sequence_ ? cfg_.seq_len : N};
}

void Model::forward_body(int batch) {
  if (batch < 1 || batch > max_batch_) throw std::logic_error("batch outside the planned range");
  const ComputeDtypeScope dtype(cfg_.compute_dtype);
  batch_ = batch;
  const int B = batch, T = cfg_.seq_len, N = B * T, C = cfg_.d_model, D = cfg_.head_dim();
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, HD = H * D, KVD = KV * D;
  const MoeShape ms = moe_shape(batch);
  for (int t = 0; t < N; ++t)
    if (inputs_[t] < 0 || inputs_[t] >= cfg_.vocab_size) throw std::runtime_error("token id outside the vocabulary");
  embedding_forward(resid_[0], inputs_, params_.value("wte"), N, C);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    LayerActs& la = layers_[l];
    const float* x = resid_[l];
    rmsnorm_forward(la.h1, la.rstd1, x, params_.value(layer_param(l, "attn_norm")), N, C, cfg_.norm_eps);
    // With qk_norm the projections land in q_raw/k_raw and their norms write q/k.
    float* q = cfg_.qk_norm ? la.q_raw : la.q;
    float* k = cfg_.qk_norm ? la.k_raw : la.k;
    matmul_nt(q, la.h1, params_.value(layer_param(l, "wq")), N, HD, C, false);
    matmul_nt(k, la.h1, params_.value(layer_param(l, "wk")), N, KVD, C, false);
    matmul_nt(la.v, la.h1, params_.value(layer_param(l, "wv")), N, KVD, C, false);
    if (const LoraMap* m = adapter(layer_param(l, "wq"))) lora_forward(q, la.h1, *m, N);
    if (const LoraMap* m = adapter(layer_param(l, "wk"))) lora_forward(k, la.h1, *m, N);
    if (const LoraMap* m = adapter(layer_param(l, "wv"))) lora_forward(la.v, la.h1, *m, N);
    if (cfg_.qk_norm) {
      rmsnorm_forward(la.q, la.rstd_q, q, params_.value(layer_param(l, "q_norm")), N, HD, cfg_.norm_eps);
      rmsnorm_forward(la.k, la.rstd_k, k, params_.value(layer_param(l, "k_norm")), N, KVD, cfg_.norm_eps);
    }
    rope_apply(la.q, B, T, H, D, cfg_.rope_theta, false);
    rope_apply(la.k, B, T, KV, D, cfg_.rope_theta, false);
    attention_forward(la.ao, la.att, la.q, la.k, la.v, B, T, H, KV, D);
    std::memcpy(la.xmid, x, (size_t)N * C * sizeof(float));
    matmul_nt(la.xmid, la.ao, params_.value(layer_param(l, "wo")), N, C, HD, true);
    if (const LoraMap* m = adapter(layer_param(l, "wo"))) lora_forward(la.xmid, la.ao, *m, N);
    rmsnorm_forward(la.h2, la.rstd2, la.xmid, params_.value(layer_param(l, "ffn_norm")), N, C, cfg_.norm_eps);
    if (cfg_.is_moe(l)) {
      moe_forward(branch_, la.moe, moe_scratch_, la.h2, params_.value(layer_param(l, "router")),
                  experts_, l, ms, adapter(layer_param(l, "router")));
    } else {
      swiglu_forward(branch_, la.g, la.u, act_, la.h2, params_.value(dense_param(l, "w1")),
                     params_.value(dense_param(l, "w3")), params_.value(dense_param(l, "w2")), N, C,
                     cfg_.d_ff_dense, dense_adapters(l));
    }
    float* out = resid_[l + 1];
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < (size_t)N * C; ++i) out[i] = la.xmid[i] + branch_[i];
  }
  rmsnorm_forward(hf_, rstdf_, resid_[cfg_.n_layers], params_.value("final_norm"), N, C, cfg_.norm_eps);
  matmul_nt(logits_, hf_, params_.value(cfg_.tie_embeddings ? "wte" : "head"), N, cfg_.vocab_size, C, false);
}

LossStats Model::forward(const int32_t* windows, int batch, float grad_scale) {
  const int T = cfg_.seq_len;
  for (int b = 0; b < batch; ++b) {
    std::memcpy(inputs_ + (size_t)b * T, windows + (size_t)b * (T + 1), T * sizeof(int32_t));
    std::memcpy(targets_ + (size_t)b * T, windows + (size_t)b * (T + 1) + 1, T * sizeof(int32_t));
  }
  for (int t = 0; t < batch * T; ++t)
    if (targets_[t] < 0 || targets_[t] >= cfg_.vocab_size) throw std::runtime_error("token id outside the vocabulary");
  forward_body(batch);
  grad_scale_ = grad_scale;
  LossStats st;
  st.ce = cross_entropy_forward_backward(logits_, targets_, batch * T, cfg_.vocab_size, grad_scale);
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (cfg_.is_moe(l)) {
      st.aux += layers_[l].moe.aux;
      st.z += layers_[l].moe.z;
    }
  st.total = st.ce + cfg_.aux_loss_weight * st.aux + cfg_.z_loss_weight * st.z;
  // Never a result: evaluation would report it, and training would step on its gradients and
  // checkpoint non-finite weights over the last good ones.
  if (!std::isfinite(st.total))
    throw std::runtime_error("the loss is not finite: the model's outputs overflow (its weights diverged or are too "
                             "large; a lower train.lr or train.grad_clip keeps training finite)");
  return st;
}

const float* Model::logits(const int32_t* inputs, int batch) {
  std::memcpy(inputs_, inputs, (size_t)batch * cfg_.seq_len * sizeof(int32_t));
  forward_body(batch);
  return logits_;
}

void Model::backward() {
  GradSink sink = lora_ ? GradSink::frozen() : GradSink{};
  backward_pass(sink);
}

void Model::set_token_units(const int* unit_of_seq) {
  if (!per_unit_) throw std::logic_error("per-unit gradients need a Model planned with per_unit");
  if (lora_) throw std::logic_error("per-unit gradients of LoRA adapters are not implemented");
  const int T = cfg_.seq_len;
  for (int t = 0; t < batch_ * T; ++t) token_unit_[t] = unit_of_seq[t / T];
}

void Model::backward_unit_norms(const int* unit_of_seq, int n_units, double* unit_sq) {
  set_token_units(unit_of_seq);
  GradSink sink = GradSink::unit_norms(token_unit_, batch_ * cfg_.seq_len, n_units, unit_sq, unit_scratch_,
                                       unit_scratch_floats_);
  backward_pass(sink);
}

void Model::backward_clipped(const int* unit_of_seq, int n_units, const float* factor) {
  set_token_units(unit_of_seq);
  GradSink sink = GradSink::clipped(token_unit_, batch_ * cfg_.seq_len, n_units, factor, unit_scratch_,
                                    unit_scratch_floats_);
  backward_pass(sink);
}

// A tied embedding's per-unit gradient is the head's part plus the embedding rows': formed
// whole, one unit at a time, from the logits' gradient (logits_) and the embedding's (dresid_).
void Model::tied_embedding_unit_norms(const GradSink& sink) {
  const ComputeDtypeScope exact(Dtype::kF32);  // a clipping norm, like every per-unit product
  const int C = cfg_.d_model, V = cfg_.vocab_size;
  float* w = sink.scratch();
  double* sq = sink.group_sq();
  for (const Segment& s : sink.segments()) {
    const int n = s.end - s.begin;
    matmul_tn(w, logits_ + (size_t)s.begin * V, hf_ + (size_t)s.begin * C, V, C, n, false);
    for (int t = s.begin; t < s.end; ++t)
      for (int c = 0; c < C; ++c) w[(size_t)inputs_[t] * C + c] += dresid_[(size_t)t * C + c];
    double total = 0;
#pragma omp parallel for simd reduction(+ : total) schedule(static)
    for (size_t i = 0; i < (size_t)V * C; ++i) total += (double)w[i] * w[i];
    sq[s.unit] += total;
  }
}

void Model::backward_pass(GradSink& sink) {
  const ComputeDtypeScope dtype(cfg_.compute_dtype);
  const int B = batch_, T = cfg_.seq_len, N = B * T, C = cfg_.d_model, D = cfg_.head_dim();
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, HD = H * D, KVD = KV * D;
  const MoeShape ms = moe_shape(B);
  const bool tied_norms = cfg_.tie_embeddings && sink.mode() == SinkMode::kUnitNorms;
  // logits_ holds d(grad_scale * CE)/d(logits) since forward().
  const char* head = cfg_.tie_embeddings ? "wte" : "head";
  sink.set_group(cfg_.n_layers);
  matmul_nn(dh_, logits_, params_.value(head), N, C, cfg_.vocab_size, false);
  if (!tied_norms) sink.linear(params_.grad(head), logits_, hf_, N, cfg_.vocab_size, C);
  std::memset(dresid_, 0, (size_t)N * C * sizeof(float));
  rmsnorm_backward(dresid_, params_.grad("final_norm"), dh_, resid_[cfg_.n_layers],
                   params_.value("final_norm"), rstdf_, N, C, sink);

  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    LayerActs& la = layers_[l];
    sink.set_group(l);
    // dresid_ is d/d(resid_[l+1]); the FFN branch's output gradient is the same tensor.
    if (cfg_.is_moe(l)) {
      moe_backward(dh_, params_.grad(layer_param(l, "router")), dresid_, la.moe, moe_scratch_, la.h2,
                   params_.value(layer_param(l, "router")), experts_, l, ms,
                   grad_scale_ * cfg_.aux_loss_weight, grad_scale_ * cfg_.z_loss_weight, sink, la.moe_dx,
                   adapter(layer_param(l, "router")));
    } else {
      swiglu_backward(dh_, params_.grad(dense_param(l, "w1")), params_.grad(dense_param(l, "w3")),
                      params_.grad(dense_param(l, "w2")), dresid_, la.g, la.u, act_, per_unit_ ? dg_ : la.g,
                      per_unit_ ? du_ : la.u, la.h2, params_.value(dense_param(l, "w1")),
                      params_.value(dense_param(l, "w3")), params_.value(dense_param(l, "w2")), N, C,
                      cfg_.d_ff_dense, sink, dense_adapters(l));
    }
    rmsnorm_backward(dresid_, params_.grad(layer_param(l, "ffn_norm")), dh_, la.xmid,
                     params_.value(layer_param(l, "ffn_norm")), la.rstd2, N, C, sink);
    // dresid_ is now d/d(xmid).
    matmul_nn(dao_, dresid_, params_.value(layer_param(l, "wo")), N, HD, C, false);
    sink.linear(params_.grad(layer_param(l, "wo")), dresid_, la.ao, N, C, HD);
    if (const LoraMap* m = adapter(layer_param(l, "wo"))) lora_backward(dao_, dresid_, la.ao, *m, N);
    attention_backward(dq_, dk_, dv_, dao_, la.att, la.q, la.k, la.v, B, T, H, KV, D);
    rope_apply(dq_, B, T, H, D, cfg_.rope_theta, true);
    rope_apply(dk_, B, T, KV, D, cfg_.rope_theta, true);
    float* dq = dq_;
    float* dk = dk_;
    if (cfg_.qk_norm) {
      std::memset(dq_raw_, 0, (size_t)N * HD * sizeof(float));
      std::memset(dk_raw_, 0, (size_t)N * KVD * sizeof(float));
      rmsnorm_backward(dq_raw_, params_.grad(layer_param(l, "q_norm")), dq_, la.q_raw,
                       params_.value(layer_param(l, "q_norm")), la.rstd_q, N, HD, sink);
      rmsnorm_backward(dk_raw_, params_.grad(layer_param(l, "k_norm")), dk_, la.k_raw,
                       params_.value(layer_param(l, "k_norm")), la.rstd_k, N, KVD, sink);
      dq = dq_raw_;
      dk = dk_raw_;
    }
    sink.linear(params_.grad(layer_param(l, "wq")), dq, la.h1, N, HD, C);
    sink.linear(params_.grad(layer_param(l, "wk")), dk, la.h1, N, KVD, C);
    sink.linear(params_.grad(layer_param(l, "wv")), dv_, la.h1, N, KVD, C);
    matmul_nn(dh_, dq, params_.value(layer_param(l, "wq")), N, C, HD, false);
    matmul_nn(dh_, dk, params_.value(layer_param(l, "wk")), N, C, KVD, true);
    matmul_nn(dh_, dv_, params_.value(layer_param(l, "wv")), N, C, KVD, true);
    if (const LoraMap* m = adapter(layer_param(l, "wq"))) lora_backward(dh_, dq, la.h1, *m, N);
    if (const LoraMap* m = adapter(layer_param(l, "wk"))) lora_backward(dh_, dk, la.h1, *m, N);
    if (const LoraMap* m = adapter(layer_param(l, "wv"))) lora_backward(dh_, dv_, la.h1, *m, N);
    rmsnorm_backward(dresid_, params_.grad(layer_param(l, "attn_norm")), dh_, resid_[l],
                     params_.value(layer_param(l, "attn_norm")), la.rstd1, N, C, sink);
  }
  sink.set_group(cfg_.n_layers);
  if (tied_norms) tied_embedding_unit_norms(sink);
  else embedding_backward(params_.grad("wte"), dresid_, inputs_, N, C, sink);
}

}  // namespace pcmoe
