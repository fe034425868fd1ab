#include "eval/weights_attack.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <stdexcept>

#include "collab/dp_batches.h"
#include "collab/expert_host.h"
#include "collab/weights_wire.h"
#include "privacy/dp_sgd.h"
#include "train/checkpoint.h"
#include "train/local_model.h"
#include "train/step.h"

namespace pcmoe::eval {

namespace fs = std::filesystem;

int first_moe_layer(const ModelConfig& mc) {
  for (int l = 0; l < mc.n_layers; ++l)
    if (mc.is_moe(l)) return l;
  throw std::runtime_error("the model has no MoE layer: weights mode sends no expert gradient to attack");
}

std::vector<float> first_moe_inputs(const ParamSet& params, const ModelConfig& mc) {
  const int V = mc.vocab_size, C = mc.d_model;
  const float* wte = params.value("wte");
  const float* norm = params.value(layer_param(first_moe_layer(mc), "ffn_norm"));
  std::vector<float> inputs((size_t)V * C);
  for (int v = 0; v < V; ++v) {
    double ss = 0;
    for (int c = 0; c < C; ++c) ss += (double)wte[(size_t)v * C + c] * wte[(size_t)v * C + c];
    const float inv = (float)(1 / std::sqrt(ss / C + mc.norm_eps));
    for (int c = 0; c < C; ++c) inputs[(size_t)v * C + c] = wte[(size_t)v * C + c] * inv * norm[c];
  }
  return inputs;
}

TokenFeatures expert_grad_features(const std::vector<const float*>& grads, const ModelConfig& mc, const float* inputs) {
  // An expert's w1 sum [F, C] has F rows of C, as a LoRA A matrix has r: the same energy feature.
  return lora_input_features(grads, mc.d_ff, inputs, mc.vocab_size, mc.d_model);
}

namespace {

// Which tokens victim v's turn of `round` held: its DP-SGD units of that round, else the batch
// the config draws.
std::vector<uint8_t> turn_tokens(const fs::path& run_dir, const RunConfig& cfg, const CollabData& data, int v,
                                 int64_t round) {
  const int T = cfg.model.seq_len, V = cfg.model.vocab_size;
  if (!cfg.privacy.enabled) {
    std::vector<int32_t> batch((size_t)cfg.train.grad_accum * cfg.train.batch_size * (T + 1));
    fill_turn(cfg, data.parties[v], round, batch.data());
    return tokens_present(batch.data(), batch.size(), V);
  }
  const fs::path file = dp_batches_file(run_dir, v);
  const PrivacyUnits units = make_privacy_units(data.parties[v].train.tokens, T, cfg.privacy.unit, data.bos_id);
  const DpBatches b = load_dp_batches(file, cfg.privacy.unit, units.n_units());
  if (round >= (int64_t)b.rounds.size())
    throw std::runtime_error(file.string() + " does not record round " + std::to_string(round) + " of the run");
  std::vector<uint8_t> present(V, 0);
  for (int u : b.rounds[round])
    for (int w = units.first[u]; w < units.first[u + 1]; ++w)
      for (int t = 0; t <= T; ++t) present[units.window(w)[t]] = 1;
  return present;
}

// Per sender: the gradient sums of w1 and w3 of each of the observer's experts at `layer` that
// the sender's turn of `round` sent it (summed, should a turn send one twice).
using ReceivedSums = std::map<int, std::map<int, std::vector<float>>>;  // from -> expert -> [w1; w3]
ReceivedSums received_sums(const RunConfig& cfg, const Recording& rec, int64_t round, int layer,
                           const std::vector<int>& hosted) {
  const ModelConfig& mc = cfg.model;
  const size_t FC = (size_t)mc.d_ff * mc.d_model;
  const WireDtype dtype = parse_wire_dtype(cfg.collab.wire_dtype);
  std::vector<float> g(3 * FC);
  ReceivedSums out;
  for (const Record& r : rec.records) {
    if (r.kind != MsgKind::kExpertGrads || r.is_response || r.round != round || r.from == rec.observer) continue;
    const ExpertRef ref =
        decode_grads_request(r.payload, mc, hosted, dtype, g.data(), g.data() + FC, g.data() + 2 * FC);
    if (ref.layer != layer) continue;
    std::vector<float>& sum = out[r.from][ref.expert];
    sum.resize(2 * FC, 0.f);
    for (size_t i = 0; i < 2 * FC; ++i) sum[i] += g[i];
  }
  return out;
}

}  // namespace

nlohmann::json weights_bag_of_words(const fs::path& run_dir, const RunConfig& cfg, const Recording& rec,
                                    const std::vector<int64_t>& rounds, const CollabData& data,
                                    const std::vector<int32_t>& windows, int n_windows) {
  const ModelConfig& mc = cfg.model;
  const int T = mc.seq_len, V = mc.vocab_size, layer = first_moe_layer(mc);
  const size_t FC = (size_t)mc.d_ff * mc.d_model;
  const int per_turn = cfg.train.grad_accum * cfg.train.batch_size;
  const std::vector<int> hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);
  LocalModel shadow(mc, cfg.train);
  std::vector<int32_t> batch((size_t)per_turn * (T + 1));
  std::fprintf(stderr, "audit: the expert gradient sums of weights mode\n");
  nlohmann::json cells = nlohmann::json::array();
  for (size_t ri = 0; ri < rounds.size(); ++ri) {
    const int64_t round = rounds[ri];
    load_checkpoint((run_dir / "audit" / ("view_r" + std::to_string(round))).string(), mc, shadow.params, nullptr);
    const std::vector<float> inputs = first_moe_inputs(shadow.params, mc);
    // The attacker's shadow turn: a turn's worth of its public windows (another slice each round)
    // through its own view; it knows these tokens, and fits the rule on its own experts' sums.
    for (int i = 0; i < per_turn; ++i)
      std::copy_n(windows.begin() + (size_t)((ri * per_turn + i) % n_windows) * (T + 1), T + 1,
                  batch.begin() + (size_t)i * (T + 1));
    accumulate_gradients(shadow.model, shadow.params, batch.data(), cfg.train.batch_size, cfg.train.grad_accum);
    std::vector<const float*> own;
    for (int e : hosted)
      for (const char* w : {"w1", "w3"}) own.push_back(shadow.params.grad(expert_param(layer, e, w)));
    const std::vector<uint8_t> own_tokens = tokens_present(batch.data(), batch.size(), V);
    TokenRule rule;
    rule.fit(expert_grad_features(own, mc, inputs.data()), own_tokens);
    for (const auto& [from, sums] : received_sums(cfg, rec, round, layer, hosted)) {
      if (sums.size() != hosted.size())
        throw std::runtime_error("party " + std::to_string(from) + "'s turn of round " + std::to_string(round) +
                                 " sent the observer gradient sums of " + std::to_string(sums.size()) + " of its " +
                                 std::to_string(hosted.size()) + " experts at layer " + std::to_string(layer));
      std::vector<const float*> got;
      for (const auto& [e, s] : sums) got.push_back(s.data()), got.push_back(s.data() + FC);
      const std::vector<uint8_t> actual = turn_tokens(run_dir, cfg, data, from, round);
      const TokenSetScore sc = score_token_set(rule.predict(expert_grad_features(got, mc, inputs.data())), actual);
      const TokenSetScore prior = score_token_set(own_tokens, actual);
      cells.push_back({{"round", round}, {"party", from}, {"layer", layer}, {"precision", sc.precision},
                       {"recall", sc.recall}, {"predicted", sc.predicted}, {"actual", sc.actual},
                       {"chance_precision", (double)sc.actual / V}, {"prior_precision", prior.precision},
                       {"prior_recall", prior.recall}});
    }
  }
  return cells;
}

}  // namespace pcmoe::eval
