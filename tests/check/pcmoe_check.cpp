// Test harness for the PyTorch reference tests (tests/reference/): reads tensors from a
// safetensors file, runs one layer or the whole model, writes outputs and gradients.
//   pcmoe_check unit NAME IN.safetensors OUT.safetensors
//   pcmoe_check model CONFIG.json IN.safetensors OUT.safetensors
//   pcmoe_check dp CONFIG.json IN.safetensors OUT.safetensors   (per-unit norms, clipped sum)
//   pcmoe_check lora CONFIG.json IN.safetensors OUT.safetensors (adapter gradients, merged weights)
//   pcmoe_check logits WEIGHTS IN.safetensors OUT.safetensors  (WEIGHTS: a checkpoint or a Hugging
//                                                                Face directory; IN: tokens [B, T])
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collab/run_config.h"
#include "model/layers.h"
#include "model/lora.h"
#include "model/local_experts.h"
#include "model/model.h"
#include "model/moe.h"
#include "tensor/arena.h"
#include "tensor/cpu.h"
#include "tensor/gemm.h"
#include "tensor/safetensors.h"
#include "privacy/dp_sgd.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/step.h"

using namespace pcmoe;
using Shape = std::vector<int64_t>;

namespace {

std::vector<float> copy_f32(const StFile& in, const std::string& name, const Shape& shape) {
  const StTensor& t = in.get(name, shape);
  return std::vector<float>(t.f32(), t.f32() + t.numel());
}

const Shape& shape_of(const StFile& in, const std::string& name) {
  auto it = in.tensors.find(name);
  if (it == in.tensors.end()) throw std::runtime_error("input tensor '" + name + "' is missing");
  return it->second.shape;
}

void unit_rmsnorm(const StFile& in, const nlohmann::json& args, StFile& out) {
  const Shape xs = shape_of(in, "x");
  const int N = (int)xs[0], C = (int)xs[1];
  auto x = copy_f32(in, "x", xs), w = copy_f32(in, "w", {C}), dout = copy_f32(in, "dout", xs);
  std::vector<float> y(N * C), rstd(N), dx(N * C, 0), dw(C, 0);
  rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), N, C, args.at("eps").get<float>());
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, C);
  out.put_f32("out", xs, y.data());
  out.put_f32("dx", xs, dx.data());
  out.put_f32("dw", {C}, dw.data());
}

void unit_rope_attention(const StFile& in, const nlohmann::json& args, StFile& out) {
  const int B = args.at("B"), T = args.at("T"), H = args.at("H"), KV = args.at("KV");
  const float theta = args.at("rope_theta");
  const int N = B * T;
  const int D = (int)shape_of(in, "q")[1] / H;
  auto q = copy_f32(in, "q", {N, H * D}), k = copy_f32(in, "k", {N, KV * D}), v = copy_f32(in, "v", {N, KV * D});
  auto dout = copy_f32(in, "dout", {N, H * D});
  std::vector<float> y(N * H * D), att((size_t)B * H * T * T), dq(N * H * D), dk(N * KV * D), dv(N * KV * D);
  rope_apply(q.data(), B, T, H, D, theta, false);
  rope_apply(k.data(), B, T, KV, D, theta, false);
  attention_forward(y.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
  attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), att.data(), q.data(), k.data(), v.data(), B, T, H, KV, D);
  rope_apply(dq.data(), B, T, H, D, theta, true);
  rope_apply(dk.data(), B, T, KV, D, theta, true);
  out.put_f32("out", {N, H * D}, y.data());
  out.put_f32("dq", {N, H * D}, dq.data());
  out.put_f32("dk", {N, KV * D}, dk.data());
  out.put_f32("dv", {N, KV * D}, dv.data());
}

void unit_swiglu(const StFile& in, StFile& out) {
  const Shape xs = shape_of(in, "x"), w1s = shape_of(in, "w1");
  const int N = (int)xs[0], C = (int)xs[1], F = (int)w1s[0];
  auto x = copy_f32(in, "x", xs), w1 = copy_f32(in, "w1", {F, C}), w3 = copy_f32(in, "w3", {F, C});
  auto w2 = copy_f32(in, "w2", {C, F}), dout = copy_f32(in, "dout", xs);
  std::vector<float> y(N * C), g(N * F), u(N * F), act(N * F), dg(N * F), du(N * F), dx(N * C), dw1(F * C, 0),
      dw3(F * C, 0), dw2(C * F, 0);
  swiglu_forward(y.data(), g.data(), u.data(), act.data(), x.data(), w1.data(), w3.data(), w2.data(), N, C, F);
  swiglu_backward(dx.data(), dw1.data(), dw3.data(), dw2.data(), dout.data(), g.data(), u.data(), act.data(),
                  dg.data(), du.data(), x.data(), w1.data(), w3.data(), w2.data(), N, C, F);
  out.put_f32("out", xs, y.data());
  out.put_f32("dx", xs, dx.data());
  out.put_f32("dw1", {F, C}, dw1.data());
  out.put_f32("dw3", {F, C}, dw3.data());
  out.put_f32("dw2", {C, F}, dw2.data());
}

void unit_moe(const StFile& in, const nlohmann::json& args, StFile& out) {
  const Shape xs = shape_of(in, "x"), w1s = shape_of(in, "w1");
  const int N = (int)xs[0], C = (int)xs[1], E = (int)w1s[0], F = (int)w1s[1];
  ModelConfig cfg;
  cfg.n_layers = 1;
  cfg.d_model = C;
  cfg.n_heads = 1;
  cfg.n_kv_heads = 1;
  cfg.n_experts = E;
  cfg.d_ff = F;
  cfg.top_k = args.at("top_k");
  cfg.renormalize = args.at("renormalize");
  cfg.compute_dtype = compute_dtype();  // the experts compute in the unit's dtype
  ParamSet params(cfg, ParamSelection{});
  auto x = copy_f32(in, "x", xs), router = copy_f32(in, "router", {E, C}), dout = copy_f32(in, "dout", xs);
  auto w1 = copy_f32(in, "w1", {E, F, C}), w3 = copy_f32(in, "w3", {E, F, C}), w2 = copy_f32(in, "w2", {E, C, F});
  for (int e = 0; e < E; ++e) {
    std::memcpy(params.value(expert_param(0, e, "w1")), w1.data() + (size_t)e * F * C, F * C * 4);
    std::memcpy(params.value(expert_param(0, e, "w3")), w3.data() + (size_t)e * F * C, F * C * 4);
    std::memcpy(params.value(expert_param(0, e, "w2")), w2.data() + (size_t)e * C * F, C * F * 4);
  }
  const int K = cfg.top_k;
  LocalExperts experts(cfg, params, N * K);
  MoeShape shape{N, C, E, K, cfg.renormalize, N};
  MoeSaved saved{};
  MoeScratch scratch{};
  AlignedBuffer block;
  plan_and_place(block, [&](Arena& a) {
    saved.plan(a, shape);
    scratch.plan(a, shape);
  });
  std::vector<float> y(N * C), dx(N * C), drouter(E * C, 0);
  moe_forward(y.data(), saved, scratch, x.data(), router.data(), experts, 0, shape);
  moe_backward(dx.data(), drouter.data(), dout.data(), saved, scratch, x.data(), router.data(), experts, 0,
               shape, args.at("aux_loss_weight").get<float>(), args.at("z_loss_weight").get<float>());
  out.put_f32("out", xs, y.data());
  out.put_f32("aux", {1}, &saved.aux);
  out.put_f32("z", {1}, &saved.z);
  out.put_i32("expert_idx", {N, K}, saved.expert);
  out.put_f32("dx", xs, dx.data());
  out.put_f32("drouter", {E, C}, drouter.data());
  std::vector<float> dw1(E * F * C), dw3(E * F * C), dw2(E * C * F);
  for (int e = 0; e < E; ++e) {
    std::memcpy(dw1.data() + (size_t)e * F * C, params.grad(expert_param(0, e, "w1")), F * C * 4);
    std::memcpy(dw3.data() + (size_t)e * F * C, params.grad(expert_param(0, e, "w3")), F * C * 4);
    std::memcpy(dw2.data() + (size_t)e * C * F, params.grad(expert_param(0, e, "w2")), C * F * 4);
  }
  out.put_f32("dw1", {E, F, C}, dw1.data());
  out.put_f32("dw3", {E, F, C}, dw3.data());
  out.put_f32("dw2", {E, C, F}, dw2.data());
}

// One adapted linear map y = x Wᵀ + s·(x Aᵀ) Bᵀ with W frozen: y, dx, dA, dB.
void unit_lora_linear(const StFile& in, const nlohmann::json& args, StFile& out) {
  const Shape xs = shape_of(in, "x"), ws = shape_of(in, "w"), as = shape_of(in, "a");
  const int N = (int)xs[0], I = (int)xs[1], O = (int)ws[0], r = (int)as[0];
  auto x = copy_f32(in, "x", xs), w = copy_f32(in, "w", {O, I}), a = copy_f32(in, "a", {r, I});
  auto b = copy_f32(in, "b", {O, r}), dout = copy_f32(in, "dout", {N, O});
  std::vector<float> y((size_t)N * O), dx((size_t)N * I), da((size_t)r * I, 0), db((size_t)O * r, 0), t((size_t)N * r);
  const LoraMap m{a.data(), b.data(), da.data(), db.data(), O, I, r, args.at("scale").get<float>(), t.data()};
  matmul_nt(y.data(), x.data(), w.data(), N, O, I, false);
  lora_forward(y.data(), x.data(), m, N);
  matmul_nn(dx.data(), dout.data(), w.data(), N, I, O, false);
  lora_backward(dx.data(), dout.data(), x.data(), m, N);
  out.put_f32("out", {N, O}, y.data());
  out.put_f32("dx", {N, I}, dx.data());
  out.put_f32("da", {r, I}, da.data());
  out.put_f32("db", {O, r}, db.data());
}

void unit_embedding(const StFile& in, StFile& out) {
  const Shape ws = shape_of(in, "wte");
  const int V = (int)ws[0], C = (int)ws[1];
  const int N = (int)shape_of(in, "tokens")[0];
  const int32_t* tokens = in.get("tokens", {N}, "I32").i32();
  auto wte = copy_f32(in, "wte", ws), dout = copy_f32(in, "dout", {N, C});
  std::vector<float> y(N * C), dwte(V * C, 0);
  embedding_forward(y.data(), tokens, wte.data(), N, C);
  embedding_backward(dwte.data(), dout.data(), tokens, N, C);
  out.put_f32("out", {N, C}, y.data());
  out.put_f32("dwte", ws, dwte.data());
}

void unit_lm_head_ce(const StFile& in, StFile& out) {
  const Shape xs = shape_of(in, "x"), ws = shape_of(in, "w");
  const int N = (int)xs[0], C = (int)xs[1], V = (int)ws[0];
  auto x = copy_f32(in, "x", xs), w = copy_f32(in, "w", ws);
  const int32_t* targets = in.get("targets", {N}, "I32").i32();
  std::vector<float> logits((size_t)N * V), dx(N * C), dw(V * C, 0);
  matmul_nt(logits.data(), x.data(), w.data(), N, V, C, false);
  float loss = cross_entropy_forward_backward(logits.data(), targets, N, V, 1.0f);
  matmul_nn(dx.data(), logits.data(), w.data(), N, C, V, false);
  matmul_tn(dw.data(), logits.data(), x.data(), V, C, N, true);
  out.put_f32("loss", {1}, &loss);
  out.put_f32("dx", xs, dx.data());
  out.put_f32("dw", ws, dw.data());
}

void run_model(const std::string& config_path, const StFile& in, StFile& out) {
  RunConfig rc = load_run_config(config_path);
  const ModelConfig& cfg = rc.model;
  const TrainConfig& tc = rc.train;
  set_num_threads(tc.threads);
  ParamSet params(cfg, ParamSelection{});
  for (const ParamTensor& t : params.tensors()) {
    const StTensor& src = in.get(t.name, t.shape);
    std::memcpy(params.value(t.name), src.f32(), t.numel * 4);
  }
  const Shape& ts = shape_of(in, "tokens");
  const int S = (int)ts[0];
  const StTensor& tokens = in.get("tokens", {S, (int64_t)tc.grad_accum * tc.batch_size, cfg.seq_len + 1}, "I32");
  LocalExperts experts(cfg, params, tc.batch_size * cfg.seq_len * cfg.top_k);
  Model model(cfg, params, experts, tc.batch_size);
  AdamW opt(params, tc);
  std::vector<float> loss(S), ce(S), norm(S), lr(S);
  const size_t per_step = (size_t)tc.grad_accum * tc.batch_size * (cfg.seq_len + 1);
  for (int s = 0; s < S; ++s) {
    LossStats ls = accumulate_gradients(model, params, tokens.i32() + s * per_step, tc.batch_size, tc.grad_accum);
    if (s == 0)
      for (const ParamTensor& t : params.tensors()) out.put_f32("grad." + t.name, t.shape, params.grad(t.name));
    UpdateStats us = apply_update(params, opt, tc, s);
    loss[s] = ls.total;
    ce[s] = ls.ce;
    norm[s] = (float)us.grad_norm;
    lr[s] = us.lr;
  }
  for (const ParamTensor& t : params.tensors()) out.put_f32("param." + t.name, t.shape, params.value(t.name));
  out.put_f32("loss", {S}, loss.data());
  out.put_f32("ce", {S}, ce.data());
  out.put_f32("grad_norm", {S}, norm.data());
  out.put_f32("lr", {S}, lr.data());
}

// One DP-SGD micro-batch: tokens[B, T+1] with units[B] (adjacent, ascending); writes the
// per-unit squared norms per clip group (unit_sq [groups, units]) and the clipped sum of every
// tensor (clipped.<name>), with the clip factors of the config's privacy section.
void run_dp(const std::string& config_path, const StFile& in, StFile& out) {
  RunConfig rc = load_run_config(config_path);
  ModelConfig cfg = rc.model;
  if (rc.privacy.aux_loss == "off") cfg.aux_loss_weight = 0;
  set_num_threads(rc.train.threads);
  ParamSet params(cfg, ParamSelection{});
  for (const ParamTensor& t : params.tensors())
    std::memcpy(params.value(t.name), in.get(t.name, t.shape).f32(), t.numel * 4);
  const int B = (int)shape_of(in, "units")[0];
  const int32_t* tokens = in.get("tokens", {B, cfg.seq_len + 1}, "I32").i32();
  const int32_t* units = in.get("units", {B}, "I32").i32();
  const int U = units[B - 1] + 1;
  LocalExperts experts(cfg, params, B * cfg.seq_len * cfg.top_k, true);
  Model model(cfg, params, experts, B, true);
  model.set_aux_per_sequence(rc.privacy.aux_loss == "per-unit");
  const DpPlan plan = plan_dp(rc.privacy, U, 1);
  const LossStats ls = model.forward(tokens, B, (float)B);
  const int G = model.clip_groups();
  std::vector<double> sq((size_t)G * U, 0.0);
  std::vector<int> unit_of_seq(units, units + B);
  model.backward_unit_norms(unit_of_seq.data(), U, sq.data());
  double norm_sum = 0;
  int clipped = 0;
  const std::vector<float> f = clip_factors(sq, G, U, plan, &norm_sum, &clipped);
  params.zero_grads();
  model.backward_clipped(unit_of_seq.data(), U, f.data());
  std::vector<float> sqf(sq.begin(), sq.end());
  out.put_f32("unit_sq", {G, U}, sqf.data());
  out.put_f32("loss", {1}, &ls.total);
  for (const ParamTensor& t : params.tensors()) out.put_f32("clipped." + t.name, t.shape, params.grad(t.name));
}

// A frozen model with the config's LoRA adapters (fed.lora_rank, lora_alpha, lora_targets):
// base weights and adapters from IN, one forward and backward of tokens[B, T+1]; writes the loss,
// every adapter gradient (grad.<name>) and the merged weights of every adapted matrix (merged.<W>).
void run_lora(const std::string& config_path, const StFile& in, StFile& out) {
  RunConfig rc = load_run_config(config_path);
  const ModelConfig& cfg = rc.model;
  set_num_threads(rc.train.threads);
  ParamSet base(cfg, ParamSelection{}, /*with_grads=*/false);
  for (const ParamTensor& t : base.tensors()) std::memcpy(base.value(t.name), in.get(t.name, t.shape).f32(), t.numel * 4);
  const int B = (int)shape_of(in, "tokens")[0];
  const int rows = B * cfg.seq_len * cfg.top_k;
  LoraAdapters lora(cfg, rc.fed.lora, rows);
  for (const ParamTensor& t : lora.params().tensors())
    std::memcpy(lora.params().value(t.name), in.get(t.name, t.shape).f32(), t.numel * 4);
  LocalExperts experts(cfg, base, rows);
  Model model(cfg, base, experts, B);
  model.set_lora(&lora);
  experts.set_lora(&lora);
  const LossStats ls = accumulate_gradients(model, lora.params(), in.get("tokens", {B, cfg.seq_len + 1}, "I32").i32(), B, 1);
  out.put_f32("loss", {1}, &ls.total);
  out.put_f32("ce", {1}, &ls.ce);
  for (const ParamTensor& t : lora.params().tensors()) out.put_f32("grad." + t.name, t.shape, lora.params().grad(t.name));
  lora.merge_into(base);
  for (const ParamTensor& t : base.tensors())
    if (lora.map(t.name)) out.put_f32("merged." + t.name, t.shape, base.value(t.name));
}

}  // namespace

// Logits of tokens [B, T] under weights loaded the way a run's initial weights are.
void run_logits(const std::string& weights, const StFile& in, StFile& out) {
  const Shape& ts = shape_of(in, "tokens");
  const int B = (int)ts[0], T = (int)ts[1];
  ModelConfig cfg = is_hf_dir(weights) ? HfSource(weights, T).model().model : read_checkpoint_config(weights).model;
  cfg.seq_len = T;
  ParamSet params(cfg, ParamSelection{});
  InitSource(weights, cfg).load(params);
  set_num_threads(2);
  LocalExperts experts(cfg, params, B * T * cfg.top_k);
  Model model(cfg, params, experts, B);
  const float* logits = model.logits(in.get("tokens", ts, "I32").i32(), B);
  out.put_f32("logits", {B, T, cfg.vocab_size}, logits);
}

int main(int argc, char** argv) {
  set_up_cpu_runtime(argv);
  try {
    if (argc != 5) throw std::runtime_error("usage: pcmoe_check unit NAME IN OUT | model CONFIG IN OUT | dp CONFIG IN OUT | lora CONFIG IN OUT | logits WEIGHTS IN OUT");
    const std::string mode = argv[1], what = argv[2];
    StFile in = read_safetensors(argv[3]);
    StFile out;
    if (mode == "model") {
      run_model(what, in, out);
    } else if (mode == "dp") {
      run_dp(what, in, out);
    } else if (mode == "lora") {
      run_lora(what, in, out);
    } else if (mode == "logits") {
      run_logits(what, in, out);
    } else if (mode == "unit") {
      set_num_threads(2);
      nlohmann::json args = nlohmann::json::object();
      if (in.metadata.count("args")) args = nlohmann::json::parse(in.metadata.at("args"));
      const ComputeDtypeScope dtype(parse_dtype(args.value("compute_dtype", "fp32"), "args.compute_dtype"));
      if (what == "rmsnorm") unit_rmsnorm(in, args, out);
      else if (what == "rope_attention") unit_rope_attention(in, args, out);
      else if (what == "swiglu") unit_swiglu(in, out);
      else if (what == "moe") unit_moe(in, args, out);
      else if (what == "embedding") unit_embedding(in, out);
      else if (what == "lora_linear") unit_lora_linear(in, args, out);
      else if (what == "lm_head_ce") unit_lm_head_ce(in, out);
      else throw std::runtime_error("unknown unit '" + what + "'");
    } else {
      throw std::runtime_error("unknown mode '" + mode + "'");
    }
    write_safetensors(argv[4], out);
  } catch (const std::exception& e) {
    std::cerr << "pcmoe_check: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
