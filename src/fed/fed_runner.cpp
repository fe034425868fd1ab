#include "fed/fed_runner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "collab/recorder.h"
#include "common/stopwatch.h"
#include "eval/bag_of_words.h"
#include "fed/fedavg.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/step.h"

namespace pcmoe::fed {
namespace {

using clock_type = std::chrono::steady_clock;

// TGAP: a fresh copy of the initial model fine-tunes on the public data for tgap_steps steps
// (the parties' schedule); blocks of each step's update pre-train the autoencoder. The last
// quarter of the recorded steps is held out to report the pre-training's effect.
nlohmann::json pretrain_tgap(const RunConfig& cfg, const data::TokenStream& pub, const std::vector<float>& initial,
                             BlockAutoencoder& ae) {
  const FedConfig& fc = cfg.fed;
  const auto t0 = clock_type::now();
  const data::BatchSampler sampler(pub, cfg.model.seq_len, cfg.train.seed + 104729);
  LocalModel m(cfg.model, cfg.train);
  scatter(initial.data(), m.params);
  const TrainConfig& tc = cfg.train;
  const size_t row = cfg.model.seq_len + 1;
  const BatchFn data = [&](int64_t step, int32_t* w) {
    for (int k = 0; k < tc.grad_accum; ++k) sampler.sample(step, k, tc.batch_size, w + (size_t)k * tc.batch_size * row);
  };
  const BlockSet all = record_updates(m, tc, fc.tgap_steps, data, fc.tgap_blocks, fc.block_size, tc.seed);
  const int held_steps = std::max(1, fc.tgap_steps / 4);
  const size_t cut = all.rows() * (fc.tgap_steps - held_steps) / fc.tgap_steps;
  const BlockSet train{fc.block_size, std::vector<float>(all.x.begin(), all.x.begin() + cut * fc.block_size)};
  const BlockSet held{fc.block_size, std::vector<float>(all.x.begin() + cut * fc.block_size, all.x.end())};
  const double before = reconstruction_loss(ae, held);
  train_autoencoder(ae, train, fc.tgap_epochs, fc.ae_batch, fc.ae_lr, tc.seed);
  return {{"public_tokens", pub.tokens.size()},   {"recorded_steps", fc.tgap_steps},
          {"blocks", all.rows()},                   {"held_out_blocks", held.rows()},
          {"held_out_mse_untrained", before},       {"held_out_mse_pretrained", reconstruction_loss(ae, held)},
          {"train_mse_pretrained", reconstruction_loss(ae, train)}, {"seconds", seconds_since(t0)}};
}

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
class ServerAudit {
 public:
  ServerAudit(CollabContext& ctx, const std::string& mode, const std::vector<float>& base)
      : ctx_(ctx), cfg_(ctx.config()), pub_(ctx.public_tokens(cfg_.fed.public_categories)),
        sampler_(pub_, cfg_.model.seq_len, cfg_.train.seed + 7919) {
    const int V = cfg_.model.vocab_size, C = cfg_.model.d_model;
    if (mode != "fedavg-lora") {
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
  void begin_round(int round, const std::vector<float>& global, bool fit) {
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
    if (!fit) return;
    std::vector<float> delta(global.size());
    gather(params, delta.data());
    for (size_t i = 0; i < delta.size(); ++i) delta[i] -= global[i];
    rule_.fit(features(delta), shadow_present_);
  }
  void party_update(int p, const std::vector<float>& update) {
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
  const nlohmann::json& cells() const { return cells_; }

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

FedStart fed_start(const RunConfig& cfg, const std::string& mode) {
  const FedConfig& fc = cfg.fed;
  FedStart s;
  {
    ParamSet init(cfg.model, ParamSelection{});
    init.init(cfg.train.seed);
    if (!cfg.collab.init_from.empty()) InitSource(cfg.collab.init_from, cfg.model).load(init);
    s.global.resize(trainable_numel(init));
    gather(init, s.global.data());
  }
  if ((mode == "int8" || mode == "topk-ef" || mode == "cg-fedllm") && (size_t)fc.block_size > s.global.size())
    throw std::runtime_error("config key 'fed.block_size' (" + std::to_string(fc.block_size) + ") is larger than the update (" +
                             std::to_string(s.global.size()) + " floats) that mode " + mode + " cuts into blocks");
  if (mode == "fedavg-lora") {
    // The full model is the frozen shared start; the global trainable state is the adapters.
    s.base = std::move(s.global);
    LoraAdapters lora(cfg.model, fc.lora, 1);
    lora.init(cfg.train.seed);
    s.global.resize(trainable_numel(lora.params()));
    gather(lora.params(), s.global.data());
  }
  return s;
}

nlohmann::json fed_facts(const RunConfig& cfg, const std::string& mode, size_t trainable_floats) {
  const FedConfig& fc = cfg.fed;
  nlohmann::json out = {{"rounds", cfg.train.steps / fc.local_steps}, {"local_steps", fc.local_steps},
                        {"trainable_floats", trainable_floats}, {"server_optimizer", fc.server_optimizer}};
  if (mode == "fedavg-lora")
    out["lora"] = {{"rank", fc.lora.rank}, {"alpha", fc.lora.alpha}, {"targets", fc.lora.targets}};
  if (mode == "topk-ef") out["topk_k"] = matched_topk(trainable_floats, fc.block_size, fc.latent());
  return out;
}

std::unique_ptr<BlockAutoencoder> server_autoencoder(const RunConfig& cfg, const std::string& mode,
                                                     const std::vector<float>& initial,
                                                     const std::function<data::TokenStream()>& public_text,
                                                     nlohmann::json& facts) {
  if (mode != "cg-fedllm") return nullptr;
  const FedConfig& fc = cfg.fed;
  auto ae = std::make_unique<BlockAutoencoder>(fc.block_size, fc.latent(), cfg.train.seed);
  if (!fc.autoencoder.empty()) load_autoencoder(fc.autoencoder, *ae);
  else if (fc.tgap_steps > 0) facts["tgap"] = pretrain_tgap(cfg, public_text(), initial, *ae);
  facts["autoencoder"] = {{"block", fc.block_size}, {"latent", fc.latent()}, {"parameters", ae->numel()},
                          {"loaded_from", fc.autoencoder}};
  return ae;
}

nlohmann::json round_line(const std::string& mode, const FedConfig& fc, int64_t round, int party, const PartyRound& pr) {
  nlohmann::json line = {{"mode", mode}, {"round", round}, {"party", party}, {"loss", pr.loss.total}, {"ce", pr.loss.ce},
                         {"lr", pr.lr}, {"grad_norm", pr.grad_norm}};
  if (mode != "fedavg" && mode != "fedavg-lora") {
    line["cosine"] = pr.fidelity.cosine;
    line["snr_db"] = pr.fidelity.snr_db;
  }
  if (mode == "cg-fedllm" && fc.faf_steps > 0) line["faf_mse"] = pr.faf_loss;
  return line;
}

nlohmann::json run_fed_mode(CollabContext& ctx, const std::string& mode) {
  const RunConfig& cfg = ctx.config();
  const FedConfig& fc = cfg.fed;
  const int n = ctx.n_parties();
  const int rounds = cfg.train.steps / fc.local_steps;
  const auto t0 = clock_type::now();

  FedStart start = fed_start(cfg, mode);
  nlohmann::json out = fed_facts(cfg, mode, start.global.size());
  std::unique_ptr<BlockAutoencoder> ae = server_autoencoder(
      cfg, mode, start.global, [&] { return ctx.public_tokens(fc.public_categories); }, out);

  InProcessTransport net;
  FedSession s(cfg.model, cfg.train, fc, mode, std::vector<int>(n, fc.local_steps), net,
               [&ctx](int p, int64_t step, int32_t* w) { ctx.fill_turn(p, step, w); }, std::move(start.global),
               std::move(ae), start.base);
  std::vector<double> cos_sum(n, 0.0), snr_sum(n, 0.0);
  // The curve evaluates the global model in party 0's model slot: each round overwrites it with
  // the global state anyway.
  nlohmann::json curve = nlohmann::json::array();
  auto add_point = [&](int64_t steps) {
    const TrafficStats st = net.stats();
    double sent = 0, received = 0;
    for (int p = 0; p < n; ++p) {
      sent += (double)st.bytes_sent(p) / n;
      received += (double)st.bytes_received(p) / n;
    }
    const double loss = ctx.curve_loss(s.party(0).load(s.server().global().data()));
    curve.push_back({{"turns", steps}, {"tokens_per_party", (double)steps * ctx.tokens_per_turn()},
                     {"bytes_sent_per_party", sent}, {"bytes_received_per_party", received}, {"val_loss_pooled", loss}});
  };
  add_point(0);
  const auto t_train = clock_type::now();
  std::unique_ptr<ServerAudit> audit;
  if (cfg.audit.enabled) {
    if (fc.public_categories.empty())
      out["audit"] = "skipped: the server's attack needs public text (fed.public_categories)";
    else
      audit = std::make_unique<ServerAudit>(ctx, mode, start.base);
  }
  for (int r = 0; r < rounds; ++r) {
    if (audit) audit->begin_round(r, s.server().global(), recorded_round(cfg.audit, rounds, r));
    if (audit && recorded_round(cfg.audit, rounds, r)) {
      s.round([&audit](int p, const std::vector<float>& update) { audit->party_update(p, update); });
    } else {
      s.round();
    }
    const int64_t steps = (int64_t)(r + 1) * fc.local_steps;
    bool due = false;  // a round of E steps may pass over a curve point
    for (int64_t k = steps - fc.local_steps + 1; k <= steps; ++k) due |= ctx.curve_due(k);
    if (due) add_point(steps);
    for (int p = 0; p < n; ++p) {
      const PartyRound& pr = s.party(p).last();
      cos_sum[p] += pr.fidelity.cosine;
      snr_sum[p] += pr.fidelity.snr_db;
      ctx.log(round_line(mode, fc, r, p, pr));
    }
    ctx.progress(mode, r + 1, rounds, s.party(0).last().loss.ce, seconds_since(t_train));
  }
  out["train_seconds"] = seconds_since(t_train);
  out["curve"] = curve;
  const TrafficStats training = net.stats();
  const double tokens = (double)cfg.train.steps * ctx.tokens_per_turn();
  if (mode == "cg-fedllm") {
    const std::filesystem::path dir = std::filesystem::path(ctx.out_dir()) / "cg-fedllm";
    std::filesystem::create_directories(dir);
    save_autoencoder(*s.server().autoencoder(), (dir / "autoencoder.safetensors").string());
  }
  {
    // The released model (the base with the adapters merged, in fedavg-lora): the membership
    // audit's target.
    ParamSet released(cfg.model, ParamSelection{});
    if (mode == "fedavg-lora") {
      LoraAdapters lora(cfg.model, fc.lora, 1);
      scatter(s.server().global().data(), lora.params());
      scatter(start.base.data(), released);
      lora.merge_into(released);
    } else {
      scatter(s.server().global().data(), released);
    }
    ctx.save_model(mode, released, (int64_t)rounds * fc.local_steps);
  }
  // Every party ends with the global model; party 0's model slot evaluates it.
  Model& eval = s.party(0).load(s.server().global().data());
  out["parties"] = nlohmann::json::array();
  for (int p = 0; p < n; ++p) {
    nlohmann::json j = ctx.evaluate(eval, p);
    j["bytes_sent_per_token"] = training.bytes_sent(p) / tokens;
    j["bytes_received_per_token"] = training.bytes_received(p) / tokens;
    j["memory"] = s.party(p).memory();
    if (mode != "fedavg" && mode != "fedavg-lora") {
      j["reconstruction_cosine"] = cos_sum[p] / rounds;
      j["reconstruction_snr_db"] = snr_sum[p] / rounds;
    }
    out["parties"].push_back(j);
  }
  out["server_memory"] = s.server().memory_bytes();
  if (audit) out["audit_bag_of_words"] = audit->cells();
  out["wall_seconds"] = seconds_since(t0);
  return out;
}

std::map<std::string, ExtraMode> fed_modes() {
  std::map<std::string, ExtraMode> m;
  for (const char* name : {"fedavg", "int8", "topk-ef", "cg-fedllm", "fedavg-lora"})
    m[name] = [mode = std::string(name)](CollabContext& ctx) { return run_fed_mode(ctx, mode); };
  return m;
}

}  // namespace pcmoe::fed
