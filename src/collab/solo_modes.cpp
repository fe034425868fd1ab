#include <algorithm>

#include "collab/run_shared.h"
#include "collab/schedule.h"
#include "common/stopwatch.h"
#include "tensor/safetensors.h"
#include "train/checkpoint.h"
#include "train/dp_step.h"
#include "train/hf_checkpoint.h"
#include "train/local_model.h"

namespace pcmoe {
namespace {

// Party p's memory-budget model from a full checkpoint: the backbone, and of the experts only
// the first of those p hosts (expert p + j*n becomes expert j, with its router row).
void load_budget_model(const std::string& path, const ModelConfig& full, int p, int n, ParamSet& params) {
  InitSource init(path, full);
  const int E = full.n_experts, C = full.d_model;
  for (const ParamTensor& t : params.tensors()) {
    if (t.name.find(".experts.") != std::string::npos || t.name.find(".router") != std::string::npos) continue;
    init.read(t.name, t.shape, params.value(t.name));
  }
  const int kept = (int)params.info(layer_param(full.moe_every - 1, "router")).shape[0];
  std::vector<float> router((size_t)E * C);
  for (int l = 0; l < full.n_layers; ++l) {
    if (!full.is_moe(l)) continue;
    init.read(layer_param(l, "router"), {E, C}, router.data());
    for (int j = 0; j < kept; ++j) {
      const int e = p + j * n;
      std::copy_n(router.data() + (size_t)e * C, C, params.value(layer_param(l, "router")) + (size_t)j * C);
      for (const char* w : {"w1", "w3", "w2"}) {
        const ParamTensor& dst = params.info(expert_param(l, j, w));
        init.read(expert_param(l, e, w), dst.shape, params.value(dst.name));
      }
    }
  }
}

}  // namespace

// One model trained on the turns of `parties` in the round-robin order (all of them: the
// centralised model on the pooled data; one: a local-only model).
// `save_as`: the checkpoint's directory under the run's (empty: not saved). `with_curve`: record
// the learning curve (the figure leaves the memory-budget models out, so they skip its cost).
nlohmann::json run_solo(Shared& sh, const char* mode, const ModelConfig& mc, const std::vector<int>& parties,
                        int own, const std::string& save_as, bool with_curve) {
  const RunConfig& cfg = sh.cfg;
  const int n_all = (int)sh.parties.size();
  TrainConfig tc = cfg.train;
  const int k = (int)parties.size();
  tc.steps *= k;  // one optimizer step per turn, as PC-MoE's experts take
  tc.warmup *= k;
  const bool dp = private_run(sh);
  ModelConfig trained = mc;
  if (dp) trained.aux_loss_weight = sh.dp_model.aux_loss_weight;
  LocalModel s(trained, tc, dp ? sh.dp_max_batch : 0, dp);
  if (dp) s.model.set_aux_per_sequence(sh.plans[0].aux_per_unit);
  if (!cfg.collab.init_from.empty()) {
    if (mc.n_experts == cfg.model.n_experts) InitSource(cfg.collab.init_from, mc).load(s.params);
    else load_budget_model(cfg.collab.init_from, cfg.model, own, n_all, s.params);
  }
  std::vector<int32_t> windows((size_t)tc.grad_accum * tc.batch_size * (mc.seq_len + 1));
  nlohmann::json curve = nlohmann::json::array();
  if (with_curve) curve.push_back(curve_point(0, sh, 0, 0, start_loss(s.model, s.params, sh)));
  const auto t0 = clock_type::now();
  const double eval0 = sh.eval_seconds;
  int64_t step = 0;
  for (int64_t round = 0; round < sh.rounds; ++round) {
    for (int p : round_order(cfg.train.seed, n_all, round)) {
      if (std::find(parties.begin(), parties.end(), p) == parties.end()) continue;
      LossStats ls;
      UpdateStats us;
      if (dp) {  // party p's turn under its own budget, on the batch its PC-MoE turn draws
        us.lr = learning_rate(tc, step);
        NoiseSource noise = noise_for(sh.plans[p], noise_stream(p, round));
        const ClippedBatch cb = dp_local_step(s.model, s.params, s.opt, noise, sh.units[p], sh.plans[p],
                                              sh.batches[p], round, us.lr);
        ls = cb.loss;
        us.grad_norm = cb.mean_norm;
      } else {
        fill_turn(sh, p, round, windows.data());
        ls = accumulate_gradients(s.model, s.params, windows.data(), tc.batch_size, tc.grad_accum);
        us = apply_update(s.params, s.opt, tc, step);
      }
      sh.metrics << nlohmann::json{{"mode", mode}, {"round", round}, {"party", p}, {"loss", ls.total},
                                   {"ce", ls.ce}, {"lr", us.lr}, {"grad_norm", us.grad_norm}}.dump()
                 << "\n";
      progress(mode, ++step, sh.rounds * k, ls.ce, seconds_since(t0));
    }
    if (with_curve && curve_due_before_end(sh, round + 1))
      curve.push_back(curve_point(round + 1, sh, 0, 0, curve_loss(s.model, sh)));
  }
  if (!save_as.empty())
    save_checkpoint((sh.out_dir / save_as / "checkpoint").string(), to_json(cfg), s.params, nullptr, step, sh.tokenizer_model);
  nlohmann::json out = {{"train_seconds", seconds_since(t0) - (sh.eval_seconds - eval0)},
                        {"memory", s.memory()},
                        {"parameters", s.params.numel()}};
  const PartsLoss end = evaluate_pooled(s.model, sh);  // one pass gives every party's own loss too
  if (own >= 0) {
    out["eval"] = party_losses(end, own);
  } else {
    out["eval"] = nlohmann::json::array();
    for (int p = 0; p < n_all; ++p) out["eval"].push_back(party_losses(end, p));
  }
  if (with_curve) {
    curve.push_back(curve_point(sh.rounds, sh, 0, 0, end.all));
    out["curve"] = curve;
  }
  return out;
}

}  // namespace pcmoe
