#include <memory>

#include "collab/party_threads.h"
#include "collab/recorder.h"
#include "collab/run_shared.h"
#include "collab/session.h"
#include "common/stopwatch.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"

namespace pcmoe {

namespace {

// Each party's start: its experts' lr scale, DP's per-sequence aux weight, the Hugging Face
// init, the state noise.
void prepare_parties(PcMoeSession& session, const Shared& sh, int n, bool dp) {
  const RunConfig& cfg = sh.cfg;
  for (int p = 0; p < n; ++p) session.party(p).expert_lr_scale = cfg.collab.expert_lr_scale;
  if (dp)
    for (int p = 0; p < n; ++p) session.party(p).model.set_aux_per_sequence(sh.plans[p].aux_per_unit);
  if (!cfg.collab.init_from.empty()) {
    InitSource init(cfg.collab.init_from, cfg.model);
    for (int p = 0; p < n; ++p) {
      init.load(session.party(p).backbone);
      init.load(session.party(p).host.params());
    }
  }
  if (cfg.collab.state_noise > 0)
    for (int p = 0; p < n; ++p)
      session.party(p).experts.set_state_noise(cfg.collab.state_noise,
                                               cfg.collab.state_noise_seed
                                                   ? NoiseSource::seeded(cfg.collab.state_noise_seed, (uint64_t)p + 1)
                                                   : NoiseSource::secure());
}

// The training traffic, one row per (message kind, sender, receiver).
nlohmann::json traffic_by_kind(const TrafficStats& training) {
  nlohmann::json traffic = nlohmann::json::array();
  for (const auto& [key, c] : training.by_kind_pair)
    traffic.push_back({{"kind", to_string(std::get<0>(key))}, {"from", std::get<1>(key)}, {"to", std::get<2>(key)},
                       {"messages", c.messages}, {"bytes", c.bytes}});
  return traffic;
}

// The audit's recorder (docs/audit.md), tapping `net`: what the observer receives.
std::unique_ptr<Recorder> start_recorder(PcMoeSession& session, Transport& net, const RunConfig& cfg,
                                         const fs::path& audit_dir) {
  const int observer = cfg.audit.observer, n = session.n_parties();
  auto recorder = std::make_unique<Recorder>(audit_dir.string(), observer, n, run_fingerprint(to_json(cfg)),
                                             [&session, observer, n](MsgKind, int from, const Bytes& payload) {
                                               return expert_call_truth(session.party(from).model, payload, observer, n);
                                             });
  net.set_tap(recorder->tap());
  if (session.schedule() == Schedule::kConcurrent) recorder->hold_until_flush();
  return recorder;
}

}  // namespace

// PC-MoE: every party trains on its own data in the seeded round-robin (or all at once, in
// concurrent rounds); experts on their hosts.
nlohmann::json run_pcmoe(Shared& sh) {
  const RunConfig& cfg = sh.cfg;
  const int n = (int)sh.parties.size();
  InProcessTransport net;
  const bool dp = private_run(sh);
  const HostPrivacy hp = dp ? HostPrivacy{true, sh.plans[0].seeded, sh.plans[0].test_seed} : HostPrivacy{};
  const Schedule schedule = parse_schedule(cfg.collab.schedule);
  PcMoeSession session(dp ? sh.dp_model : cfg.model, cfg.train, n, net, dp ? sh.dp_max_batch : 0, hp,
                       parse_wire_dtype(cfg.collab.wire_dtype), parse_exchange(cfg.collab.exchange), schedule);
  prepare_parties(session, sh, n, dp);
  const fs::path audit_dir = sh.out_dir / "audit";
  std::unique_ptr<Recorder> recorder = cfg.audit.enabled ? start_recorder(session, net, cfg, audit_dir) : nullptr;
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
  std::vector<std::vector<int32_t>> windows(
      n, std::vector<int32_t>((size_t)cfg.train.grad_accum * cfg.train.batch_size * (cfg.model.seq_len + 1)));
  // Party p's turn `turn` of round `round`: its metrics line. Touches party p's state alone (and,
  // through the transport, the hosts), so the parties of a concurrent round run it at once.
  auto train = [&](int p, int64_t turn, int64_t round) {
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
      fill_turn(sh, p, round, windows[p].data());
      r = session.train_turn(turn, windows[p].data());
      tokens[p] += (double)sh.tokens_per_turn;
    }
    line.update({{"loss", r.loss.total}, {"ce", r.loss.ce}, {"lr", r.lr}, {"grad_norm", r.grad_norm}});
    return line;
  };
  // Concurrent rounds: one thread per party, each with its share of train.threads (at least one).
  std::unique_ptr<PartyThreads> threads;
  if (schedule == Schedule::kConcurrent) threads = std::make_unique<PartyThreads>(n, std::max(1, cfg.train.threads / n));
  std::vector<nlohmann::json> lines(n);
  for (int64_t round = 0; round < sh.rounds; ++round) {
    if (recorder) {
      const bool record = recorded_round(cfg.audit, sh.rounds, round);
      recorder->set_round(round, record);
      // The observer's view at the round's start: its backbone and the experts it can query.
      if (record) {
        assemble(cfg.audit.observer, whole);
        save_checkpoint((audit_dir / ("view_r" + std::to_string(round))).string(), to_json(cfg), whole, nullptr, round,
                        sh.tokenizer_model);
      }
    }
    if (threads) {
      threads->run([&](int p) { lines[p] = train(p, round * n + p, round); });
    } else {
      for (int i = 0; i < n; ++i) lines[i] = train(session.holder(round * n + i), round * n + i, round);
    }
    for (const nlohmann::json& line : lines) {
      sh.metrics << line.dump() << "\n";
      progress("pc-moe", ++done, (int64_t)n * sh.rounds, line["ce"].get<float>(), seconds_since(t0));
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
    save_checkpoint((sh.out_dir / ("party" + std::to_string(p)) / "checkpoint").string(), to_json(cfg), whole, nullptr,
                    sh.rounds, sh.tokenizer_model);
  }
  nlohmann::json out = {{"train_seconds", seconds}, {"exchange", cfg.collab.exchange}, {"parties", nlohmann::json::array()}};
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
  out["traffic"] = traffic_by_kind(training);
  if (recorder)
    out["audit_recording"] = {{"observer", cfg.audit.observer}, {"records", recorder->records()},
                              {"bytes", recorder->bytes()}, {"dir", audit_dir.string()}};
  return out;
}

}  // namespace pcmoe
