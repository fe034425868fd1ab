#include <memory>

#include "collab/recorder.h"
#include "collab/run_shared.h"
#include "collab/session.h"
#include "common/stopwatch.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"

namespace pcmoe {

namespace {

// Each party's start: DP's per-sequence aux weight, the Hugging Face init, the state noise.
void prepare_parties(PcMoeSession& session, const Shared& sh, int n, bool dp) {
  const RunConfig& cfg = sh.cfg;
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

}  // namespace

// PC-MoE: every party trains on its own data in the seeded round-robin; experts on their hosts.
nlohmann::json run_pcmoe(Shared& sh) {
  const RunConfig& cfg = sh.cfg;
  const int n = (int)sh.parties.size();
  InProcessTransport net;
  const bool dp = private_run(sh);
  const HostPrivacy hp = dp ? HostPrivacy{true, sh.plans[0].seeded, sh.plans[0].test_seed} : HostPrivacy{};
  PcMoeSession session(dp ? sh.dp_model : cfg.model, cfg.train, n, net, dp ? sh.dp_max_batch : 0, hp,
                       parse_wire_dtype(cfg.collab.wire_dtype), parse_exchange(cfg.collab.exchange));
  prepare_parties(session, sh, n, dp);
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
        save_checkpoint((audit_dir / ("view_r" + std::to_string(round))).string(), to_json(cfg), whole, nullptr, round,
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
