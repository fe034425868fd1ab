#include "fed/fed_runner.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "collab/recorder.h"
#include "common/stopwatch.h"
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
  if (fed_mode(mode).compressed() && (size_t)fc.block_size > s.global.size())
    throw std::runtime_error("config key 'fed.block_size' (" + std::to_string(fc.block_size) + ") is larger than the update (" +
                             std::to_string(s.global.size()) + " floats) that mode " + mode + " cuts into blocks");
  if (fed_mode(mode).lora) {
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
  if (fed_mode(mode).lora)
    out["lora"] = {{"rank", fc.lora.rank}, {"alpha", fc.lora.alpha}, {"targets", fc.lora.targets}};
  if (fed_mode(mode).codec == FedCodec::topk_ef) out["topk_k"] = matched_topk(trainable_floats, fc.block_size, fc.latent());
  return out;
}

std::unique_ptr<BlockAutoencoder> server_autoencoder(const RunConfig& cfg, const std::string& mode,
                                                     const std::vector<float>& initial,
                                                     const std::function<data::TokenStream()>& public_text,
                                                     nlohmann::json& facts) {
  if (fed_mode(mode).codec != FedCodec::autoencoder) return nullptr;
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
  if (fed_mode(mode).compressed()) {
    line["cosine"] = pr.fidelity.cosine;
    line["snr_db"] = pr.fidelity.snr_db;
  }
  if (fed_mode(mode).codec == FedCodec::autoencoder && fc.faf_steps > 0) line["faf_mse"] = pr.faf_loss;
  return line;
}

nlohmann::json run_fed_mode(CollabContext& ctx, const std::string& mode, const ServerObserverFactory& server_audit) {
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
  std::unique_ptr<ServerObserver> audit = server_audit ? server_audit(ctx, mode, start.base, out) : nullptr;
  for (int r = 0; r < rounds; ++r) {
    const bool recorded = recorded_round(cfg.audit, rounds, r);
    if (audit) audit->begin_round(r, s.server().global(), s.server().autoencoder(), recorded);
    if (audit && recorded) {
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
  if (s.server().autoencoder()) {
    const std::filesystem::path dir = std::filesystem::path(ctx.out_dir()) / mode;
    std::filesystem::create_directories(dir);
    save_autoencoder(*s.server().autoencoder(), (dir / "autoencoder.safetensors").string());
  }
  {
    // The released model (the base with the adapters merged, in fedavg-lora): the membership
    // audit's target.
    ParamSet released(cfg.model, ParamSelection{});
    if (fed_mode(mode).lora) {
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
    if (fed_mode(mode).compressed()) {
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

std::map<std::string, ExtraMode> fed_modes(const ServerObserverFactory& server_audit) {
  std::map<std::string, ExtraMode> m;
  for (const FedMode& row : fed_mode_table())
    m[row.name] = [mode = std::string(row.name), server_audit](CollabContext& ctx) { return run_fed_mode(ctx, mode, server_audit); };
  return m;
}

}  // namespace pcmoe::fed
