#include "collab/runner.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "collab/curves_plot.h"
#include "collab/recorder.h"
#include "collab/session.h"
#include "common/sha256.h"
#include "common/stopwatch.h"
#include "tensor/gemm.h"
#include "tensor/safetensors.h"
#include "train/checkpoint.h"
#include "train/dp_step.h"
#include "train/local_model.h"
#include "train/step.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace pcmoe {
namespace {

using clock_type = std::chrono::steady_clock;

struct Shared {
  const RunConfig& cfg;
  std::vector<PartyStreams> parties;
  std::vector<int32_t> pooled_val;
  int n_pooled_val = 0;
  std::ofstream metrics;
  int64_t tokens_per_turn = 0;
  fs::path out_dir;
  std::string tokenizer_model;
  // DP-SGD (privacy section): each party's units and plan (its own budget), the rounds the
  // tightest budget allows, the micro-batch that holds any unit, the model config trained.
  std::vector<PrivacyUnits> units;
  std::vector<DpPlan> plans;
  std::vector<PoissonSampler> batches;  // one per party, shared by every mode: equal batches
  int64_t rounds = 0;
  int dp_max_batch = 0;
  ModelConfig dp_model;
  std::vector<int> val_parts;  // windows of each party in pooled_val, in party order
  // Every validation pass (the table's and the learning curves'), measured: what it costs.
  double eval_seconds = 0, eval_cpu_seconds = 0;
  int64_t eval_windows = 0;
  // The curves' first points by the weights evaluated: every mode starts from the same weights,
  // so the start is evaluated once (keyed by a hash, so a mode that starts elsewhere is evaluated).
  std::map<std::string, double> start_losses;
};

bool private_run(const Shared& sh) { return !sh.plans.empty(); }
uint64_t noise_stream(int p, int64_t round) { return ((uint64_t)(p + 1) << 32) + (uint64_t)round; }

// One model on every party's validation windows, timed. The learning curves use the same
// windows as the final table, so a curve's last point is the table's pooled loss.
PartsLoss evaluate_pooled(Model& model, Shared& sh) {
  const auto t0 = clock_type::now();
  const double cpu0 = process_cpu_seconds();
  PartsLoss r = evaluate_parts(model, sh.pooled_val, sh.val_parts);
  sh.eval_seconds += seconds_since(t0);
  sh.eval_cpu_seconds += process_cpu_seconds() - cpu0;
  sh.eval_windows += sh.n_pooled_val;
  return r;
}
// A model's validation loss for party `own`: on the pooled validation data and on its own.
nlohmann::json party_losses(const PartsLoss& r, int own) {
  return {{"val_loss_pooled", r.all}, {"val_loss_own", r.part[own]}};
}
nlohmann::json evaluate_everywhere(Model& model, Shared& sh, int own) { return party_losses(evaluate_pooled(model, sh), own); }

double curve_loss(Model& model, Shared& sh) { return evaluate_pooled(model, sh).all; }
// The curve's loss at the start of a mode, whose model holds `params`.
double start_loss(Model& model, const ParamSet& params, Shared& sh) {
  const std::string key = std::to_string(model.max_batch()) + " " +
                          sha256_hex(std::string((const char*)params.values(), params.numel() * sizeof(float)));
  const auto it = sh.start_losses.find(key);
  return it != sh.start_losses.end() ? it->second : sh.start_losses[key] = curve_loss(model, sh);
}
bool curve_due(const Shared& sh, int64_t done) {
  const int every = sh.cfg.train.eval_every;
  return done == 0 || done == sh.rounds || (every > 0 && done % every == 0);
}
// collab's own modes take the curve's last point from the final evaluation, not a pass of its own.
bool curve_due_before_end(const Shared& sh, int64_t done) { return done < sh.rounds && curve_due(sh, done); }
nlohmann::json curve_point(int64_t done, const Shared& sh, double bytes_sent, double bytes_received, double loss) {
  return {{"turns", done}, {"tokens_per_party", (double)done * sh.tokens_per_turn},
          {"bytes_sent_per_party", bytes_sent}, {"bytes_received_per_party", bytes_received}, {"val_loss_pooled", loss}};
}

void progress(const char* mode, int64_t done, int64_t total, float loss, double s) {
  const bool tty = isatty(STDERR_FILENO);
  if (!tty && done % 50 != 0 && done != total) return;
  std::fprintf(stderr, "%s[%s] turn %lld/%lld | loss %.4f | %.0fs, ETA %.0fs%s", tty ? "\r" : "", mode,
               (long long)done, (long long)total, loss, s, s / done * (total - done), tty ? "   " : "\n");
  if (tty && done == total) std::fprintf(stderr, "\n");
}

void fill_turn(const Shared& sh, int party, int64_t step, int32_t* windows) {
  pcmoe::fill_turn(sh.cfg, sh.parties[party], step, windows);
}

// PC-MoE: every party trains on its own data in the seeded round-robin; experts on their hosts.
nlohmann::json run_pcmoe(Shared& sh) {
  const RunConfig& cfg = sh.cfg;
  const int n = (int)sh.parties.size();
  InProcessTransport net;
  const bool dp = private_run(sh);
  const HostPrivacy hp = dp ? HostPrivacy{true, sh.plans[0].seeded, sh.plans[0].test_seed} : HostPrivacy{};
  PcMoeSession session(dp ? sh.dp_model : cfg.model, cfg.train, n, net, dp ? sh.dp_max_batch : 0, hp,
                       parse_wire_dtype(cfg.collab.wire_dtype));
  if (dp)
    for (int p = 0; p < n; ++p) session.party(p).model.set_aux_per_sequence(sh.plans[p].aux_per_unit);
  if (!cfg.collab.init_from.empty())
    for (int p = 0; p < n; ++p) {
      load_checkpoint(cfg.collab.init_from, cfg.model, session.party(p).backbone, nullptr);
      load_checkpoint(cfg.collab.init_from, cfg.model, session.party(p).host.params(), nullptr);
    }
  if (cfg.collab.state_noise > 0)
    for (int p = 0; p < n; ++p)
      session.party(p).experts.set_state_noise(cfg.collab.state_noise,
                                               cfg.collab.state_noise_seed
                                                   ? NoiseSource::seeded(cfg.collab.state_noise_seed, (uint64_t)p + 1)
                                                   : NoiseSource::secure());
  std::unique_ptr<Recorder> recorder;
  const fs::path audit_dir = sh.out_dir / "audit";
  if (cfg.audit.enabled) {
    const int observer = cfg.audit.observer;
    recorder = std::make_unique<Recorder>(audit_dir.string(), observer, n, run_fingerprint(to_json(cfg)),
                                          [&session, observer, n](MsgKind, int from, const Bytes& payload) {
                                            return expert_call_truth(session.party(from).model, payload, observer, n);
                                          });
    net.set_tap(recorder->tap());
  }
  std::vector<int32_t> windows((size_t)cfg.train.grad_accum * cfg.train.batch_size * (cfg.model.seq_len + 1));
  // Party p's model as it would use it: its own backbone with the shared experts (the curve's,
  // the final checkpoints', and the audit observer's view).
  auto assemble = [&](int p, ParamSet& model) {
    model.copy_values_from(session.party(p).backbone);
    for (int h = 0; h < n; ++h) model.copy_values_from(session.party(h).host.params());
  };
  // The curve evaluates each party's assembled model here, so no evaluation crosses the transport.
  ParamSet whole(cfg.model, ParamSelection{}, /*with_grads=*/false);
  LocalExperts whole_experts(cfg.model, whole, cfg.train.batch_size * cfg.model.seq_len * cfg.model.top_k);
  Model whole_model(cfg.model, whole, whole_experts, cfg.train.batch_size);
  nlohmann::json curve = nlohmann::json::array();
  auto add_point = [&](int64_t done_rounds) {
    double loss = 0, sent = 0, received = 0;
    const TrafficStats st = net.stats();
    for (int p = 0; p < n; ++p) {
      assemble(p, whole);
      loss += (done_rounds == 0 ? start_loss(whole_model, whole, sh) : curve_loss(whole_model, sh)) / n;
      sent += (double)st.bytes_sent(p) / n;
      received += (double)st.bytes_received(p) / n;
    }
    curve.push_back(curve_point(done_rounds, sh, sent, received, loss));
  };
  add_point(0);
  const auto t0 = clock_type::now();
  const double eval0 = sh.eval_seconds;  // train_seconds leaves the curve's evaluations out
  int64_t done = 0;
  std::vector<double> tokens(n, 0.0);
  for (int64_t round = 0; round < sh.rounds; ++round) {
    if (recorder) {
      const bool record = recorded_round(cfg.audit, sh.rounds, round);
      recorder->set_round(round, record);
      // The observer's view at the round's start: its backbone and the experts it can query.
      if (record) {
        assemble(cfg.audit.observer, whole);
        save_checkpoint((audit_dir / ("view_r" + std::to_string(round))).string(), cfg, whole, nullptr, round,
                        sh.tokenizer_model);
      }
    }
    for (int64_t turn = round * n; turn < (round + 1) * n; ++turn) {
      const int p = session.holder(turn);
      nlohmann::json line = {{"mode", "pc-moe"}, {"round", round}, {"party", p}};
      TurnResult r;
      if (dp) {
        const std::vector<int> sampled = sh.batches[p].sample(round, sh.units[p].n_units(), sh.plans[p].q);
        const DpTurnResult d = session.train_dp_turn(turn, sh.units[p], sh.plans[p], sampled, noise_stream(p, round));
        r = d.turn;
        tokens[p] += (double)d.batch.windows * cfg.model.seq_len;
        line["units"] = d.batch.units;
        line["epsilon"] = sh.plans[p].epsilon_after(round + 1);
      } else {
        fill_turn(sh, p, round, windows.data());
        r = session.train_turn(turn, windows.data());
        tokens[p] += (double)sh.tokens_per_turn;
      }
      line.update({{"loss", r.loss.total}, {"ce", r.loss.ce}, {"lr", r.lr}, {"grad_norm", r.grad_norm}});
      sh.metrics << line.dump() << "\n";
      progress("pc-moe", ++done, (int64_t)n * sh.rounds, r.loss.ce, seconds_since(t0));
    }
    if (curve_due_before_end(sh, round + 1)) add_point(round + 1);
  }
  const double seconds = seconds_since(t0) - (sh.eval_seconds - eval0);
  const TrafficStats training = net.stats();  // before evaluation adds its own traffic
  if (recorder) recorder->set_round(sh.rounds, false);
  // Each party's model, saved for `pcmoe eval` and `pcmoe generate` (the simulation can gather
  // what a deployment keeps apart).
  for (int p = 0; p < n; ++p) {
    assemble(p, whole);
    save_checkpoint((sh.out_dir / ("party" + std::to_string(p)) / "checkpoint").string(), cfg, whole, nullptr,
                    sh.rounds, sh.tokenizer_model);
  }
  nlohmann::json out = {{"train_seconds", seconds}, {"parties", nlohmann::json::array()}};
  const size_t transport_bytes = 2 * net.largest_payload();
  double end_loss = 0, end_sent = 0, end_received = 0;
  for (int p = 0; p < n; ++p) {
    nlohmann::json j = evaluate_everywhere(session.party(p).model, sh, p);
    end_loss += j["val_loss_pooled"].get<double>() / n;
    end_sent += (double)training.bytes_sent(p) / n;
    end_received += (double)training.bytes_received(p) / n;
    j["memory"] = party_memory(session.party(p), transport_bytes);
    j["tokens_trained"] = tokens[p];
    j["bytes_sent_per_token"] = training.bytes_sent(p) / tokens[p];
    j["bytes_received_per_token"] = training.bytes_received(p) / tokens[p];
    out["parties"].push_back(j);
  }
  curve.push_back(curve_point(sh.rounds, sh, end_sent, end_received, end_loss));
  out["curve"] = curve;
  nlohmann::json traffic = nlohmann::json::array();
  for (const auto& [key, c] : training.by_kind_pair)
    traffic.push_back({{"kind", to_string(std::get<0>(key))}, {"from", std::get<1>(key)}, {"to", std::get<2>(key)},
                       {"messages", c.messages}, {"bytes", c.bytes}});
  out["traffic"] = traffic;
  if (recorder)
    out["audit_recording"] = {{"observer", cfg.audit.observer}, {"records", recorder->records()},
                              {"bytes", recorder->bytes()}, {"dir", audit_dir.string()}};
  return out;
}

// Party p's memory-budget model from a full checkpoint: the backbone, and of the experts only
// the first of those p hosts (expert p + j*n becomes expert j, with its router row).
void load_budget_model(const std::string& dir, const ModelConfig& full, int p, int n, ParamSet& params) {
  const std::string where = resolve_checkpoint(dir);
  if (to_json(read_checkpoint_config(where).model) != to_json(full))
    throw std::runtime_error("checkpoint '" + where + "' was made with another model config than this run's");
  const StFile file = read_safetensors((fs::path(where) / "model.safetensors").string());
  const int E = full.n_experts, C = full.d_model;
  for (const ParamTensor& t : params.tensors()) {
    if (t.name.find(".experts.") != std::string::npos || t.name.find(".router") != std::string::npos) continue;
    std::copy_n(file.get(t.name, t.shape).f32(), t.numel, params.value(t.name));
  }
  const int kept = (int)params.info(layer_param(full.moe_every - 1, "router")).shape[0];
  for (int l = 0; l < full.n_layers; ++l) {
    if (!full.is_moe(l)) continue;
    const float* router = file.get(layer_param(l, "router"), {E, C}).f32();
    for (int j = 0; j < kept; ++j) {
      const int e = p + j * n;
      std::copy_n(router + (size_t)e * C, C, params.value(layer_param(l, "router")) + (size_t)j * C);
      for (const char* w : {"w1", "w3", "w2"}) {
        const ParamTensor& dst = params.info(expert_param(l, j, w));
        std::copy_n(file.get(expert_param(l, e, w), dst.shape).f32(), dst.numel, params.value(dst.name));
      }
    }
  }
}

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
    if (mc.n_experts == cfg.model.n_experts) load_checkpoint(cfg.collab.init_from, mc, s.params, nullptr);
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
    save_checkpoint((sh.out_dir / save_as / "checkpoint").string(), cfg, s.params, nullptr, step, sh.tokenizer_model);
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

class Context final : public CollabContext {
 public:
  Context(Shared& sh, const CollabData& data) : sh_(sh), data_(data) {}
  const RunConfig& config() const override { return sh_.cfg; }
  int n_parties() const override { return (int)sh_.parties.size(); }
  int64_t tokens_per_turn() const override { return sh_.tokens_per_turn; }
  void fill_turn(int party, int64_t step, int32_t* windows) const override {
    pcmoe::fill_turn(sh_.cfg, sh_.parties[party], step, windows);
  }
  nlohmann::json evaluate(Model& model, int party) const override { return evaluate_everywhere(model, sh_, party); }
  double curve_loss(Model& model) const override { return pcmoe::curve_loss(model, sh_); }
  bool curve_due(int64_t steps) const override { return pcmoe::curve_due(sh_, steps); }
  std::string out_dir() const override { return sh_.out_dir.string(); }
  void save_model(const std::string& name, const ParamSet& params, int64_t step) const override {
    save_checkpoint((sh_.out_dir / name / "checkpoint").string(), sh_.cfg, params, nullptr, step, sh_.tokenizer_model);
  }
  void log(const nlohmann::json& line) override { sh_.metrics << line.dump() << "\n"; }
  void progress(const std::string& mode, int64_t done, int64_t total, float loss, double seconds) const override {
    pcmoe::progress(mode.c_str(), done, total, loss, seconds);
  }
  data::TokenStream public_tokens(const std::vector<std::string>& categories) const override {
    return pcmoe::public_tokens(sh_.cfg, data_, categories);
  }

 private:
  Shared& sh_;
  const CollabData& data_;
};

// The figure's title and notes: what was trained, on whose data, what its axes mean.
CurvePlotText curve_text(const Shared& sh, const nlohmann::json& report) {
  const int n = (int)sh.parties.size();
  CurvePlotText t;
  t.title = "pcmoe collab: validation loss while " + std::to_string(n) + " parties train (" +
            std::to_string(sh.rounds) + " turns of " + std::to_string(sh.tokens_per_turn) + " tokens each)";
  for (int p = 0; p < n; ++p) {
    std::string cats;
    for (const std::string& c : sh.parties[p].categories) cats += (cats.empty() ? "" : ", ") + c;
    t.notes.push_back("party " + std::to_string(p) + " holds (" + sh.cfg.data.corpus + "): " + cats);
  }
  std::string per_party;
  for (int k : sh.val_parts) per_party += (per_party.empty() ? "" : "/") + std::to_string(k);
  t.notes.push_back("pooled: a model's mean cross-entropy on all " + std::to_string(sh.n_pooled_val) +
                    " validation windows of " + std::to_string(sh.cfg.model.seq_len) + " tokens (" + per_party +
                    " from the parties' held-out documents), the same windows as the table's pooled column;");
  const int every = sh.cfg.train.eval_every;
  t.notes.push_back("pc-moe and local-only: the mean over the parties' own models. Points at the start, " +
                    (every > 0 ? "every " + std::to_string(every) + " turns per party " : std::string()) +
                    "and the end; the last is the table's.");
  std::string silent;
  for (const auto& [m, c] : report["curves"].items())
    if (c.back()["bytes_sent_per_party"].get<double>() == 0) silent += (silent.empty() ? "" : ", ") + m;
  if (!silent.empty()) t.notes.push_back("bytes: as the transport counts them; " + silent + " send nothing (left panel only).");
  return t;
}

}  // namespace

std::string shared_tokenizer_file(const RunConfig& cfg) {
  if (!cfg.collab.init_from.empty()) return (fs::path(resolve_checkpoint(cfg.collab.init_from)) / "tokenizer.model").string();
  return cfg.data.tokenizer;
}

CollabData load_collab_data(const RunConfig& cfg, int only_party, bool deployed_files) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  const int n = cfg.parties.n_parties;
  const int own = deployed_files && cfg.parties.mode == "paths" ? only_party : -1;  // read only this party's path
  const std::string tokenizer_file = shared_tokenizer_file(cfg);
  if (own >= 0 && tokenizer_file.empty())
    throw std::runtime_error("a deployed party reads only its own parties.paths entry, so the shared tokenizer must "
                             "come from a file: set data.tokenizer (`pcmoe tokenizer` trains one on public text)");
  CollabData out;
  out.corpus = cfg.parties.mode == "paths" ? data::load_party_corpora(cfg.parties, own) : data::load_corpus(cfg.data);
  out.split = data::split_documents(out.corpus, cfg.data.val_fraction, cfg.data.split_seed);
  out.assignment = data::assign_parties(out.corpus, out.split, cfg.parties, own);
  const data::Corpus& corpus = out.corpus;
  const std::vector<data::PartyData>& assignment = out.assignment;
  // One tokenizer for all: a shared file, or one trained on the union of the parties' training
  // documents (a shared vocabulary is part of the shared model).
  std::vector<size_t> union_train;
  for (const auto& pd : assignment) union_train.insert(union_train.end(), pd.train.begin(), pd.train.end());
  std::sort(union_train.begin(), union_train.end());
  out.tokenizer = tokenizer_file.empty() ? data::Tokenizer::train_or_load(corpus, union_train, cfg.data)
                                         : data::Tokenizer::load(tokenizer_file);
  const data::Tokenizer& tok = out.tokenizer;
  if (tok.vocab_size() != mc.vocab_size)
    throw std::runtime_error("tokenizer has " + std::to_string(tok.vocab_size()) + " pieces but model.vocab_size is " +
                             std::to_string(mc.vocab_size));

  out.tokens_per_turn = tokens_per_step(cfg);
  out.tokenizer_model = tok.model_file();
  out.bos_id = tok.bos_id();
  for (int p = 0; p < n; ++p) {
    PartyStreams ps;
    if (only_party >= 0 && p != only_party) {
      out.parties.push_back(std::move(ps));
      continue;
    }
    ps.train = data::encode_documents(tok, corpus, assignment[p].train, cfg.data.cache_dir);
    ps.val = data::encode_documents(tok, corpus, assignment[p].val, cfg.data.cache_dir);
    if (ps.train.tokens.size() <= (size_t)mc.seq_len + 1 || ps.val.tokens.size() <= (size_t)mc.seq_len + 1)
      throw std::runtime_error("party " + std::to_string(p) + " has fewer than seq_len+1 tokens of training or validation text");
    ps.val_windows = data::validation_windows(ps.val, mc.seq_len, tc.eval_windows, &ps.n_val);
    ps.categories = assignment[p].categories;
    std::fprintf(stderr, "party %d: %zu train tokens, %zu validation tokens, categories:", p, ps.train.tokens.size(),
                 ps.val.tokens.size());
    for (const auto& c : ps.categories) std::fprintf(stderr, " %s", c.c_str());
    std::fprintf(stderr, "\n");
    out.parties.push_back(std::move(ps));
  }
  // Samplers point at their streams: made once the streams have stopped moving.
  for (int p = 0; p < n; ++p)
    if (only_party < 0 || p == only_party)
      out.parties[p].sampler = std::make_unique<data::BatchSampler>(out.parties[p].train, mc.seq_len, party_seed(cfg, p));
  return out;
}

data::TokenStream public_tokens(const RunConfig& cfg, const CollabData& data, const std::vector<std::string>& categories) {
  for (const data::PartyData& pd : data.assignment)
    for (const std::string& c : categories)
      if (std::find(pd.categories.begin(), pd.categories.end(), c) != pd.categories.end())
        throw std::runtime_error("category '" + c + "' is held by a party and cannot be treated as public");
  std::vector<size_t> docs;
  for (size_t d : data.split.train)
    if (std::find(categories.begin(), categories.end(), data.corpus.docs[d].category) != categories.end()) docs.push_back(d);
  data::TokenStream ts = data::encode_documents(data.tokenizer, data.corpus, docs, cfg.data.cache_dir);
  if (ts.tokens.size() <= (size_t)cfg.model.seq_len + 1)
    throw std::runtime_error("the public categories hold fewer than seq_len+1 tokens of training text");
  return ts;
}

uint64_t party_seed(const RunConfig& cfg, int party) { return cfg.train.seed + 7919 * (uint64_t)(party + 1); }

void fill_turn(const RunConfig& cfg, const PartyStreams& party, int64_t step, int32_t* windows) {
  const TrainConfig& tc = cfg.train;
  const size_t row = cfg.model.seq_len + 1;
  for (int m = 0; m < tc.grad_accum; ++m)
    party.sampler->sample(step, m, tc.batch_size, windows + (size_t)m * tc.batch_size * row);
}

nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir,
                          const std::map<std::string, ExtraMode>& extra_modes) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  const int n = cfg.parties.n_parties;
  set_num_threads(tc.threads);
  const auto t_start = clock_type::now();
  for (const std::string& m : cfg.collab.modes) {
    if (m != "pc-moe" && m != "centralised" && m != "local-only" && !extra_modes.count(m))
      throw std::runtime_error("mode '" + m + "' is not available to this runner");
    if (cfg.privacy.enabled && extra_modes.count(m))
      throw std::runtime_error("mode '" + m + "' does not run DP-SGD: the privacy section applies to pc-moe, "
                               "centralised and local-only");
  }

  CollabData data = load_collab_data(cfg);
  Shared sh{cfg, std::move(data.parties), {}, 0, std::ofstream(), data.tokens_per_turn, out_dir,
            data.tokenizer_model, {}, {}, {}, 0, 0, {}, {}, 0, 0, 0, {}};
  sh.rounds = tc.steps;
  if (cfg.privacy.enabled) {
    sh.dp_model = mc;
    for (int p = 0; p < n; ++p) {
      sh.units.push_back(make_privacy_units(sh.parties[p].train.tokens, mc.seq_len, cfg.privacy.unit, data.bos_id));
      sh.plans.push_back(plan_dp(cfg.privacy, sh.units[p].n_units(), tc.steps));
      const DpPlan& d = sh.plans[p];
      sh.batches.push_back(sampler_for(d, party_seed(cfg, p)));
      std::fprintf(stderr, "party %d DP-SGD: %d units, q %.4g, noise multiplier %.4f, clip %.4g, delta %.3g, epsilon %.3f after %lld turns | %s\n",
                   p, d.n_units, d.q, d.sigma, d.clip, d.delta, d.epsilon_after(d.budget_steps), (long long)d.budget_steps,
                   d.randomness().c_str());
      sh.rounds = std::min(sh.rounds, d.budget_steps);
      sh.dp_max_batch = std::max({sh.dp_max_batch, tc.batch_size, sh.units[p].max_windows()});
    }
    if (!sh.plans[0].aux_per_unit) sh.dp_model.aux_loss_weight = 0;
    if (sh.rounds < tc.steps)
      std::fprintf(stderr, "DP-SGD: the tightest party budget allows %lld rounds of %d; stopping there\n",
                   (long long)sh.rounds, tc.steps);
  }
  fs::create_directories(out_dir);  // after the plans: a refused privacy section writes nothing
  sh.metrics.open(fs::path(out_dir) / "metrics.jsonl", std::ios::trunc);
  // The pooled validation set: every party's own windows, each party weighted alike.
  for (const PartyStreams& ps : sh.parties) {
    sh.pooled_val.insert(sh.pooled_val.end(), ps.val_windows.begin(), ps.val_windows.end());
    sh.n_pooled_val += ps.n_val;
    sh.val_parts.push_back(ps.n_val);
  }

  auto wants = [&](const char* m) { return std::find(cfg.collab.modes.begin(), cfg.collab.modes.end(), m) != cfg.collab.modes.end(); };
  // With DP-SGD a party's batches are Poisson draws: its expected tokens.
  int64_t tokens_per_party = sh.rounds * sh.tokens_per_turn;
  if (private_run(sh)) {
    double expected = 0;
    for (int p = 0; p < n; ++p)
      expected += sh.rounds * sh.plans[p].q * sh.units[p].n_windows() * mc.seq_len / n;
    tokens_per_party = (int64_t)expected;
  }
  nlohmann::json report = {{"parties", n}, {"tokens_per_party", tokens_per_party}, {"modes", nlohmann::json::object()}};
  std::vector<int> everyone(n);
  for (int p = 0; p < n; ++p) everyone[p] = p;
  if (wants("pc-moe")) report["modes"]["pc-moe"] = run_pcmoe(sh);
  if (wants("centralised")) report["modes"]["centralised"] = run_solo(sh, "centralised", mc, everyone, -1, "centralised", true);
  if (wants("local-only")) {
    ModelConfig budget = mc;  // the backbone and this party's share of the experts
    budget.n_experts = std::max(1, mc.n_experts / n);
    budget.top_k = std::min(mc.top_k, budget.n_experts);
    nlohmann::json full = nlohmann::json::array(), small = nlohmann::json::array();
    for (int p = 0; p < n; ++p) {
      // the full local-only models are kept: the audit's membership inference targets them too
      full.push_back(run_solo(sh, ("local-only full, party " + std::to_string(p)).c_str(), mc, {p}, p,
                              "local-only/party" + std::to_string(p), true));
      small.push_back(run_solo(sh, ("local-only budget, party " + std::to_string(p)).c_str(), budget, {p}, p, "", false));
    }
    report["modes"]["local-only-full"] = full;
    report["modes"]["local-only-budget"] = small;
    report["local_only_budget_experts"] = budget.n_experts;
  }
  Context context(sh, data);
  for (const std::string& m : cfg.collab.modes)
    if (extra_modes.count(m)) report["modes"][m] = extra_modes.at(m)(context);

  // Per party: validation loss on its own data and on the pooled data, for each mode.
  nlohmann::json table = nlohmann::json::array();
  for (int p = 0; p < n; ++p) {
    nlohmann::json row = {{"party", p}, {"categories", sh.parties[p].categories}, {"val_windows", sh.parties[p].n_val}};
    const auto& modes = report["modes"];
    if (modes.contains("pc-moe")) row["pc-moe"] = modes["pc-moe"]["parties"][p];
    if (modes.contains("centralised")) row["centralised"] = modes["centralised"]["eval"][p];
    if (modes.contains("local-only-full")) row["local-only-full"] = modes["local-only-full"][p]["eval"];
    if (modes.contains("local-only-budget")) row["local-only-budget"] = modes["local-only-budget"][p]["eval"];
    for (const auto& [m, run] : extra_modes)
      if (modes.contains(m)) row[m] = modes[m]["parties"][p];
    table.push_back(row);
  }
  report["per_party"] = table;
  // The learning curves, local-only's as the mean over the parties' own full models.
  nlohmann::json curves = nlohmann::json::object();
  for (const auto& [m, run] : report["modes"].items()) {
    if (m == "local-only-budget") continue;
    if (m != "local-only-full") {
      curves[m] = run["curve"];
      continue;
    }
    nlohmann::json mean = run[0]["curve"];
    for (size_t i = 0; i < mean.size(); ++i) {
      double loss = 0;
      for (const auto& party : run) loss += party["curve"][i]["val_loss_pooled"].get<double>() / run.size();
      mean[i]["val_loss_pooled"] = loss;
    }
    curves["local-only"] = mean;
  }
  report["curves"] = curves;
  if (report["modes"].contains("pc-moe") && report["modes"].contains("centralised")) {
    size_t largest = 0;
    for (const auto& pp : report["modes"]["pc-moe"]["parties"]) largest = std::max(largest, pp["memory"]["total"].get<size_t>());
    report["peak_memory_ratio"] = (double)largest / report["modes"]["centralised"]["memory"]["total"].get<double>();
  }
  if (private_run(sh)) {
    report["privacy"] = nlohmann::json::array();
    for (const DpPlan& d : sh.plans) report["privacy"].push_back(d.report(sh.rounds));
  }
  report["rounds"] = sh.rounds;
  report["peak_rss_bytes"] = peak_rss_bytes();
  report["wall_seconds"] = seconds_since(t_start);
  report["cpu_seconds"] = process_cpu_seconds();
  report["evaluation"] = {{"seconds", sh.eval_seconds}, {"cpu_seconds", sh.eval_cpu_seconds}, {"windows", sh.eval_windows}};
  report["config"] = to_json(cfg);
  std::ofstream(fs::path(out_dir) / "report.json") << report.dump(2) << "\n";
  write_curve_plot(curves, out_dir, curve_text(sh, report));
  return report;
}

}  // namespace pcmoe
