#include "net/fed_deploy.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

#include "collab/runner.h"
#include "common/stopwatch.h"
#include "fed/fed_runner.h"
#include "net/certs.h"
#include "net/coordinator.h"
#include "net/grpc_transport.h"
#include "tensor/gemm.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace pcmoe::net {
using namespace pcmoe::fed;
namespace {

using clock_type = std::chrono::steady_clock;

int rounds_of(const RunConfig& cfg) { return cfg.train.steps / cfg.fed.local_steps; }

// Before any work: what a federated process does not offer.
void refuse_pcmoe_options(const PartyOptions& opts, const DeployRun& dr) {
  if (opts.resume || opts.until >= 0)
    throw std::runtime_error("--resume and --until are for pc-moe deployments; a federated deployment (deploy.mode " +
                             dr.deploy.mode + ") runs every round in one go");
}

// Runs process `me`'s `role` between joining and the "finished" barrier: serves its Party
// service with the handler `serve` installs (and the coordinator on party 0), joins, sends
// heartbeats; on any failure stops the run for everyone and rethrows. Writes the report.
nlohmann::json as_member(const DeployRun& dr, const PartyOptions& opts, int me, size_t trainable_floats,
                         const std::function<void(GrpcTransport&)>& serve,
                         const std::function<nlohmann::json(GrpcTransport&, CoordinatorClient&)>& role) {
  const RunConfig& cfg = dr.run;
  const std::string name = dr.deploy.parties[me].name;
  std::optional<TlsFiles> tls;
  if (!opts.insecure) tls = read_tls_files(opts.certs_dir, name);
  set_num_threads(cfg.train.threads);
  fs::create_directories(opts.out_dir);
  // A round carries the whole trainable state (or its encoding): the bound of a streamed call
  // is the round's largest message where that exceeds the expert calls'.
  DeployConfig deploy = dr.deploy;
  deploy.max_payload_bytes =
      std::max(deploy.max_payload_bytes,
               largest_round_message(deploy.mode, trainable_floats, cfg.fed, cfg.train.seed) + 64 * 1024);
  GrpcTransport net(deploy, me, tls);
  const int rounds = rounds_of(cfg);
  net.count_turns_below((uint64_t)rounds);  // the final model's calls are not training traffic
  serve(net);
  const SectionHashes sections = section_hashes(dr);
  std::unique_ptr<CoordinatorService> coordinator;
  if (me == 0)
    coordinator = std::make_unique<CoordinatorService>(deploy, net.secure(), sections, cfg.train.seed, rounds);
  net.start(coordinator.get());
  std::fprintf(stderr, "%s: %s on %s (%s), server %s, joining %s at %s\n", name.c_str(), deploy.mode.c_str(),
               deploy.parties[me].address.c_str(), net.secure() ? "mutual TLS" : "INSECURE plaintext",
               deploy.parties[fed_server_index(deploy)].name.c_str(), deploy.parties[0].name.c_str(),
               deploy.parties[0].address.c_str());
  CoordinatorClient coord(net, me);
  nlohmann::json report;
  coord.start_heartbeat();
  try {
    coord.join(sections, 0, 0, rounds);  // a fresh start: no checkpoint to offer
    std::fprintf(stderr, "%s: all %zu processes joined\n", name.c_str(), deploy.parties.size());
    report = role(net, coord);
    coord.barrier("finished");
    coord.stop_heartbeat();
    if (coordinator) coordinator->wait_released("finished", deploy.call_timeout_s);
  } catch (const std::exception& e) {
    abandon_run(coord, coordinator.get(), net, e.what());
    throw;
  }
  net.shutdown();
  report["name"] = name;
  report["mode"] = deploy.mode;
  report["fed_server"] = deploy.fed_server;
  report["transport"] = net.secure() ? "grpc+mtls" : "grpc-insecure";
  report["peak_rss_bytes"] = peak_rss_bytes();
  std::ofstream(fs::path(opts.out_dir) / "report.json") << report.dump(2) << "\n";
  return report;
}

// The server's run over `net` (it is process net.me()): its autoencoder (TGAP on public_text()
// for cg-fedllm), the rounds in collab's order, then the final global model to every party.
// Returns its report; `training` gets the rounds' traffic (the final model's calls are not in it).
nlohmann::json drive_rounds(const DeployRun& dr, GrpcTransport& net, FedStart start,
                            const std::function<data::TokenStream()>& public_text, const std::string& out_dir,
                            TrafficStats& training) {
  const RunConfig& cfg = dr.run;
  const std::string& mode = dr.deploy.mode;
  const int n = dr.deploy.n_parties, rounds = rounds_of(cfg), me = net.me();
  nlohmann::json rep = fed_facts(cfg, mode, start.global.size());
  std::unique_ptr<BlockAutoencoder> ae = server_autoencoder(cfg, mode, start.global, public_text, rep);
  FedServer server(cfg.fed, mode, std::move(start.global), std::move(ae));
  const auto t0 = clock_type::now();
  for (int r = 0; r < rounds; ++r) {
    net.set_step((uint64_t)r);
    drive_round(server, net, me, n);
    std::fprintf(stderr, "server: round %d of %d done (%.1f s)\n", r + 1, rounds, seconds_since(t0));
  }
  rep["train_seconds"] = seconds_since(t0);
  training = net.traffic();
  if (server.autoencoder()) {
    const fs::path dir = fs::path(out_dir) / mode;
    fs::create_directories(dir);
    save_autoencoder(*server.autoencoder(), (dir / "autoencoder.safetensors").string());
  }
  net.set_step((uint64_t)rounds);
  Writer w;
  w.floats(server.global().data(), server.global().size());
  const Bytes global = w.take();
  for (int p = 0; p < n; ++p) net.call(me, p, MsgKind::kFedGlobal, global);
  const double tokens = (double)cfg.train.steps * (double)tokens_per_step(cfg) * n;  // every party's
  rep["server_memory"] = server.memory_bytes();
  rep["tokens"] = tokens;
  rep.update(traffic_report(training, me, tokens));
  return rep;
}

}  // namespace

nlohmann::json run_fed_party(const PartyOptions& opts, const DeployRun& dr) {
  const RunConfig& cfg = dr.run;
  const std::string& mode = dr.deploy.mode;
  const int n = dr.deploy.n_parties, me = opts.party;
  if (me < 0 || me >= n) throw std::runtime_error("--party must be in [0, " + std::to_string(n) + ")");
  refuse_pcmoe_options(opts, dr);
  const int server_id = fed_server_index(dr.deploy);
  const bool hosts_server = server_id == me;
  const CollabData data = load_collab_data(cfg, me, true);
  const PartyStreams& own = data.parties[me];
  FedStart start = fed_start(cfg, mode);
  FedParty party(
      cfg.model, cfg.train, cfg.fed, mode, me, cfg.fed.local_steps,
      [&](int64_t step, int32_t* w) { fill_turn(cfg, own, step, w); }, start.base);

  std::ofstream metrics;
  std::mutex mu;  // the handler runs on the transport's threads; the final model is read on this one
  std::vector<float> final_global;
  double cos_sum = 0, snr_sum = 0, tokens = 0;
  const auto serve = [&](GrpcTransport& net) {
    metrics.open(fs::path(opts.out_dir) / "metrics.jsonl", std::ios::trunc);
    net.serve(me, [&](MsgKind kind, int from, const Bytes& req) -> Bytes {
      if (from != server_id)
        throw std::runtime_error("a federated party answers only the server, " + dr.deploy.parties[server_id].name);
      std::lock_guard<std::mutex> lock(mu);
      set_num_threads(cfg.train.threads);  // a server thread: compute with the run's thread count
      if (kind == MsgKind::kFedRound) {
        Bytes update = party.handle(req);
        const PartyRound& pr = party.last();
        metrics << round_line(mode, cfg.fed, party.rounds() - 1, me, pr).dump() << "\n";
        metrics.flush();
        cos_sum += pr.fidelity.cosine;
        snr_sum += pr.fidelity.snr_db;
        tokens += (double)pr.tokens;
        return update;
      }
      if (kind == MsgKind::kFedGlobal) {
        if (req.size() != 4 * party.trainable_floats())
          throw std::runtime_error("the final model has " + std::to_string(req.size()) + " bytes, expected " +
                                   std::to_string(4 * party.trainable_floats()));
        final_global.resize(party.trainable_floats());
        Reader rd(req);
        rd.floats(final_global.data(), final_global.size());
        return {};
      }
      throw std::runtime_error("a federated party takes fed_round and fed_global calls, not " +
                               std::string(to_string(kind)));
    });
  };
  const auto public_text = [&] { return public_tokens(cfg, data, cfg.fed.public_categories); };
  const auto role = [&](GrpcTransport& net, CoordinatorClient& coord) {
    nlohmann::json rep = {{"party", me}, {"parties", n}};
    TrafficStats training;
    const auto t0 = clock_type::now();
    if (hosts_server)
      rep["server"] = drive_rounds(dr, net, std::move(start), public_text, opts.out_dir, training);
    coord.barrier("trained");  // every round is done and every party holds the final model
    if (!hosts_server) training = net.traffic();
    std::lock_guard<std::mutex> lock(mu);
    if (final_global.empty()) throw std::runtime_error("the server sent no final model");
    rep["train_seconds"] = seconds_since(t0);
    rep["rounds"] = party.rounds();
    rep["val_loss_own"] = evaluate(party.load(final_global.data()), own.val_windows, own.n_val);
    rep["tokens"] = tokens;
    rep.update(traffic_report(training, me, tokens));
    rep["memory"] = party.memory();
    if (fed_mode(mode).compressed()) {
      rep["reconstruction_cosine"] = cos_sum / party.rounds();
      rep["reconstruction_snr_db"] = snr_sum / party.rounds();
    }
    return rep;
  };
  return as_member(dr, opts, me, party.trainable_floats(), serve, role);
}

nlohmann::json run_fed_server(const PartyOptions& opts) {
  const DeployRun dr = load_deploy_run(opts.config);
  if (dr.deploy.fed_server != "separate")
    throw std::runtime_error("config file '" + opts.config + "' has no separate server (deploy.fed_server is '" +
                             dr.deploy.fed_server + "', deploy.mode '" + dr.deploy.mode +
                             "'): the server runs in party 0's process");
  refuse_pcmoe_options(opts, dr);
  const RunConfig& cfg = dr.run;
  const int me = fed_server_index(dr.deploy);
  FedStart start = fed_start(cfg, dr.deploy.mode);
  const size_t trainable = start.global.size();
  const auto serve = [&](GrpcTransport& net) {
    net.serve(me, [](MsgKind, int, const Bytes&) -> Bytes {
      throw std::runtime_error("the federated server takes no calls");
    });
  };
  const auto role = [&](GrpcTransport& net, CoordinatorClient& coord) {
    // Only TGAP reads text: the corpus and tokenizer, as the parties derive them, and no party's streams.
    const auto public_text = [&] {
      const CollabData data = load_collab_data(cfg, dr.deploy.n_parties, true);
      return public_tokens(cfg, data, cfg.fed.public_categories);
    };
    TrafficStats training;
    nlohmann::json rep = drive_rounds(dr, net, std::move(start), public_text, opts.out_dir, training);
    rep["parties"] = dr.deploy.n_parties;
    coord.barrier("trained");
    return rep;
  };
  return as_member(dr, opts, me, trainable, serve, role);
}

}  // namespace pcmoe::net
