#include "eval/fed_server_audit.h"

#include <cmath>

#include "eval/bag_of_words.h"
#include "fed/fedavg.h"
#include "fed/lora_model.h"
#include "collab/fed_config.h"
#include "train/step.h"

namespace pcmoe::eval {
namespace {

using fed::gather;
using fed::LoraModel;
using fed::scatter;

// Where tensor `name` starts in the gather() order of `params`.
size_t gather_offset(const ParamSet& params, const std::string& name) {
  size_t offset = 0;
  for (const ParamTensor& t : params.tensors()) {
    if (t.name == name) return offset;
    offset += t.numel;
  }
  throw std::logic_error("no tensor " + name + " to audit");
}

// The leakage audit's federated server (config section "audit"): it runs a shadow party of its
// own every round — the round's global model, trained local_steps steps on public text with an
// AdamW state that persists across rounds as a party's does — and at each recorded round fits
// the bag-of-words rule on the shadow's update and applies it to each party's decoded update;
// the party's batches score it. Full-model modes are read from the embedding rows, fedavg-lora
// from the A matrices of the first layer's attention adapters (eval/bag_of_words.h).
class ServerAudit : public fed::ServerObserver {
 public:
  ServerAudit(CollabContext& ctx, const std::string& mode, const std::vector<float>& base)
      : ctx_(ctx), cfg_(ctx.config()), mode_(mode), pub_(ctx.public_tokens(cfg_.fed.public_categories)),
        sampler_(pub_, cfg_.model.seq_len, cfg_.train.seed + 7919) {
    const int V = cfg_.model.vocab_size, C = cfg_.model.d_model;
    if (!fed_mode(mode).lora) {
      full_ = std::make_unique<LocalModel>(cfg_.model, cfg_.train);
      wte_ = gather_offset(full_->params, "wte");
      return;
    }
    lora_ = std::make_unique<LoraModel>(cfg_.model, cfg_.train, cfg_.fed.lora);
    scatter(base.data(), lora_->base);
    for (const char* w : {"wq", "wk", "wv"})
      if (lora_->lora.params().has(layer_param(0, w) + ".lora_a"))
        lora_a_.push_back(gather_offset(lora_->lora.params(), layer_param(0, w) + ".lora_a"));
    if (lora_a_.empty())
      throw std::runtime_error("the audit's LoRA attack reads the first layer's wq, wk or wv adapters; fed.lora_targets has none");
    // Each token's input to those projections: its embedding RMS-normalised, times the norm's weight.
    const float* wte = lora_->base.value("wte");
    const float* norm = lora_->base.value(layer_param(0, "attn_norm"));
    inputs_.resize((size_t)V * C);
    for (int v = 0; v < V; ++v) {
      double ss = 0;
      for (int c = 0; c < C; ++c) ss += (double)wte[(size_t)v * C + c] * wte[(size_t)v * C + c];
      const float inv = (float)(1 / std::sqrt(ss / C + cfg_.model.norm_eps));
      for (int c = 0; c < C; ++c) inputs_[(size_t)v * C + c] = wte[(size_t)v * C + c] * inv * norm[c];
    }
  }
  // Every round, before the parties' updates; `fit`: a recorded round.
  void begin_round(int round, const std::vector<float>& global, const fed::BlockAutoencoder* ae, bool fit) override {
    const TrainConfig& tc = cfg_.train;
    const int E = cfg_.fed.local_steps, V = cfg_.model.vocab_size;
    round_ = round;
    ParamSet& params = full_ ? full_->params : lora_->lora.params();
    Model& model = full_ ? full_->model : lora_->model;
    AdamW& opt = full_ ? full_->opt : lora_->opt;
    global_ = global;
    scatter(global.data(), params);
    shadow_present_.assign(V, 0);
    std::vector<int32_t> w((size_t)tc.grad_accum * tc.batch_size * (cfg_.model.seq_len + 1));
    for (int s = 0; s < E; ++s) {
      const int64_t step = (int64_t)round * E + s;
      for (int k = 0; k < tc.grad_accum; ++k)
        sampler_.sample(step, k, tc.batch_size, w.data() + (size_t)k * tc.batch_size * (cfg_.model.seq_len + 1));
      for (int32_t t : w) shadow_present_[t] = 1;
      accumulate_gradients(model, params, w.data(), tc.batch_size, tc.grad_accum);
      apply_update(params, opt, tc, step);
    }
    std::vector<float> delta(global.size());
    gather(params, delta.data());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] -= global[i];
    // The rule is fitted on what the server decodes of the shadow, through the parties' uplink
    // codec (topk-ef with the shadow's own error feedback, so it encodes every round; cg-fedllm
    // with the round's autoencoder): a rule fitted on the exact update ranks a decoded one upside
    // down (cg-fedllm's round 0 once scored 0.001 against chance 0.212).
    if (!codec_) codec_ = fed::make_codec(mode_, delta.size(), cfg_.fed, ae);
    const Bytes code = codec_->encode(delta.data(), delta.size());
    if (!fit) return;
    codec_->decode(code, delta.data(), delta.size());
    rule_.fit(features(delta), shadow_present_);
  }
  void party_update(int p, const std::vector<float>& update) override {
    const TrainConfig& tc = cfg_.train;
    const int E = cfg_.fed.local_steps, V = cfg_.model.vocab_size;
    std::vector<int32_t> w((size_t)tc.grad_accum * tc.batch_size * (cfg_.model.seq_len + 1));
    std::vector<uint8_t> actual(V, 0);
    for (int s = 0; s < E; ++s) {
      ctx_.fill_turn(p, (int64_t)round_ * E + s, w.data());
      for (int32_t t : w) actual[t] = 1;
    }
    const eval::TokenSetScore sc = eval::score_token_set(rule_.predict(features(update)), actual);
    // The best guess without the update: the tokens of the server's own public round.
    const eval::TokenSetScore prior = eval::score_token_set(shadow_present_, actual);
    cells_.push_back({{"round", round_}, {"party", p}, {"precision", sc.precision}, {"recall", sc.recall},
                      {"predicted", sc.predicted}, {"actual", sc.actual}, {"chance_precision", (double)sc.actual / V},
                      {"prior_precision", prior.precision}, {"prior_recall", prior.recall}});
  }
  nlohmann::json cells() const override { return cells_; }

 private:
  eval::TokenFeatures features(const std::vector<float>& update) const {
    const int V = cfg_.model.vocab_size, C = cfg_.model.d_model;
    if (full_) return eval::embedding_row_features(update.data() + wte_, global_.data() + wte_, V, C);
    std::vector<const float*> a;
    for (size_t offset : lora_a_) a.push_back(update.data() + offset);
    return eval::lora_input_features(a, cfg_.fed.lora.rank, inputs_.data(), V, C);
  }

  CollabContext& ctx_;
  const RunConfig& cfg_;
  std::string mode_;
  std::unique_ptr<fed::UpdateCodec> codec_;  // the shadow's uplink codec, made on the first round
  data::TokenStream pub_;
  data::BatchSampler sampler_;
  std::unique_ptr<LocalModel> full_;  // the shadow party: full-model modes
  std::unique_ptr<LoraModel> lora_;   // fedavg-lora
  size_t wte_ = 0;                    // full: the embedding rows in the trainable state
  std::vector<size_t> lora_a_;        // fedavg-lora: the first layer's A matrices in the adapters' state
  std::vector<float> inputs_;         // fedavg-lora: [V, C] each token's input to those adapters
  int round_ = 0;
  std::vector<float> global_;
  std::vector<uint8_t> shadow_present_;
  eval::TokenRule rule_;
  nlohmann::json cells_ = nlohmann::json::array();
};

}  // namespace

std::unique_ptr<fed::ServerObserver> fed_server_audit(CollabContext& ctx, const std::string& mode,
                                                      const std::vector<float>& base, nlohmann::json& facts) {
  const RunConfig& cfg = ctx.config();
  if (!cfg.audit.enabled) return nullptr;
  if (cfg.fed.public_categories.empty()) {
    facts["audit"] = "skipped: the server's attack needs public text (fed.public_categories)";
    return nullptr;
  }
  return std::make_unique<ServerAudit>(ctx, mode, base);
}

}  // namespace pcmoe::eval
