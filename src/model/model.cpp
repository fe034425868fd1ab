#include "model/model.h"

#include <cstring>
#include <stdexcept>

#include "model/layers.h"
#include "tensor/arena.h"
#include "tensor/gemm.h"

namespace pcmoe {

Model::Model(const ModelConfig& cfg, ParamSet& params, ExpertBackend& experts, int max_batch)
    : cfg_(cfg), params_(params), experts_(experts), max_batch_(max_batch),
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
      la.att = a.take<float>(B * H * T * T);
      la.ao = a.take<float>(N * HD);
      la.xmid = a.take<float>(N * C);
      la.rstd2 = a.take<float>(N);
      la.h2 = a.take<float>(N * C);
      if (cfg.is_moe(l)) {
        la.moe.plan(a, ms);
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
    dao_ = a.take<float>(N * HD);
    branch_ = a.take<float>(N * C);
    act_ = a.take<float>(N * cfg.d_ff_dense);
    if (cfg.n_moe_layers() > 0) moe_scratch_.plan(a, ms);
  });
}

MoeShape Model::moe_shape(int batch) const {
  return {batch * cfg_.seq_len, cfg_.d_model, cfg_.n_experts, cfg_.top_k, cfg_.renormalize};
}

void Model::forward_body(int batch) {
  if (batch < 1 || batch > max_batch_) throw std::logic_error("batch outside the planned range");
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
    matmul_nt(la.q, la.h1, params_.value(layer_param(l, "wq")), N, HD, C, false);
    matmul_nt(la.k, la.h1, params_.value(layer_param(l, "wk")), N, KVD, C, false);
    matmul_nt(la.v, la.h1, params_.value(layer_param(l, "wv")), N, KVD, C, false);
    rope_apply(la.q, B, T, H, D, cfg_.rope_theta, false);
    rope_apply(la.k, B, T, KV, D, cfg_.rope_theta, false);
    attention_forward(la.ao, la.att, la.q, la.k, la.v, B, T, H, KV, D);
    std::memcpy(la.xmid, x, (size_t)N * C * sizeof(float));
    matmul_nt(la.xmid, la.ao, params_.value(layer_param(l, "wo")), N, C, HD, true);
    rmsnorm_forward(la.h2, la.rstd2, la.xmid, params_.value(layer_param(l, "ffn_norm")), N, C, cfg_.norm_eps);
    if (cfg_.is_moe(l)) {
      moe_forward(branch_, la.moe, moe_scratch_, la.h2, params_.value(layer_param(l, "router")),
                  experts_, l, ms);
    } else {
      swiglu_forward(branch_, la.g, la.u, act_, la.h2, params_.value(dense_param(l, "w1")),
                     params_.value(dense_param(l, "w3")), params_.value(dense_param(l, "w2")), N, C,
                     cfg_.d_ff_dense);
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
  return st;
}

const float* Model::logits(const int32_t* inputs, int batch) {
  std::memcpy(inputs_, inputs, (size_t)batch * cfg_.seq_len * sizeof(int32_t));
  forward_body(batch);
  return logits_;
}

void Model::backward() {
  const int B = batch_, T = cfg_.seq_len, N = B * T, C = cfg_.d_model, D = cfg_.head_dim();
  const int H = cfg_.n_heads, KV = cfg_.n_kv_heads, HD = H * D, KVD = KV * D;
  const MoeShape ms = moe_shape(B);
  // logits_ holds d(grad_scale * CE)/d(logits) since forward().
  const char* head = cfg_.tie_embeddings ? "wte" : "head";
  matmul_nn(dh_, logits_, params_.value(head), N, C, cfg_.vocab_size, false);
  matmul_tn(params_.grad(head), logits_, hf_, cfg_.vocab_size, C, N, true);
  std::memset(dresid_, 0, (size_t)N * C * sizeof(float));
  rmsnorm_backward(dresid_, params_.grad("final_norm"), dh_, resid_[cfg_.n_layers],
                   params_.value("final_norm"), rstdf_, N, C);

  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    LayerActs& la = layers_[l];
    // dresid_ is d/d(resid_[l+1]); the FFN branch's output gradient is the same tensor.
    if (cfg_.is_moe(l)) {
      moe_backward(dh_, params_.grad(layer_param(l, "router")), dresid_, la.moe, moe_scratch_, la.h2,
                   params_.value(layer_param(l, "router")), experts_, l, ms,
                   grad_scale_ * cfg_.aux_loss_weight, grad_scale_ * cfg_.z_loss_weight);
    } else {
      swiglu_backward(dh_, params_.grad(dense_param(l, "w1")), params_.grad(dense_param(l, "w3")),
                      params_.grad(dense_param(l, "w2")), dresid_, la.g, la.u, act_, la.h2,
                      params_.value(dense_param(l, "w1")), params_.value(dense_param(l, "w3")),
                      params_.value(dense_param(l, "w2")), N, C, cfg_.d_ff_dense);
    }
    rmsnorm_backward(dresid_, params_.grad(layer_param(l, "ffn_norm")), dh_, la.xmid,
                     params_.value(layer_param(l, "ffn_norm")), la.rstd2, N, C);
    // dresid_ is now d/d(xmid).
    matmul_nn(dao_, dresid_, params_.value(layer_param(l, "wo")), N, HD, C, false);
    matmul_tn(params_.grad(layer_param(l, "wo")), dresid_, la.ao, C, HD, N, true);
    attention_backward(dq_, dk_, dv_, dao_, la.att, la.q, la.k, la.v, B, T, H, KV, D);
    rope_apply(dq_, B, T, H, D, cfg_.rope_theta, true);
    rope_apply(dk_, B, T, KV, D, cfg_.rope_theta, true);
    matmul_tn(params_.grad(layer_param(l, "wq")), dq_, la.h1, HD, C, N, true);
    matmul_tn(params_.grad(layer_param(l, "wk")), dk_, la.h1, KVD, C, N, true);
    matmul_tn(params_.grad(layer_param(l, "wv")), dv_, la.h1, KVD, C, N, true);
    matmul_nn(dh_, dq_, params_.value(layer_param(l, "wq")), N, C, HD, false);
    matmul_nn(dh_, dk_, params_.value(layer_param(l, "wk")), N, C, KVD, true);
    matmul_nn(dh_, dv_, params_.value(layer_param(l, "wv")), N, C, KVD, true);
    rmsnorm_backward(dresid_, params_.grad(layer_param(l, "attn_norm")), dh_, resid_[l],
                     params_.value(layer_param(l, "attn_norm")), la.rstd1, N, C);
  }
  embedding_backward(params_.grad("wte"), dresid_, inputs_, N, C);
}

}  // namespace pcmoe
