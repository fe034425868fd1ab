#include "net/party.h"

#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include "collab/runner.h"
#include "collab/session.h"
#include "net/certs.h"
#include "net/coordinator.h"
#include "net/deploy.h"
#include "net/fed_deploy.h"
#include "net/grpc_transport.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

extern char** environ;
namespace fs = std::filesystem;

namespace pcmoe::net {

using clock_type = std::chrono::steady_clock;

nlohmann::json traffic_json(const TrafficStats& stats) {
  nlohmann::json traffic = nlohmann::json::array();
  for (const auto& [key, c] : stats.by_kind_pair)
    traffic.push_back({{"kind", to_string(std::get<0>(key))}, {"from", std::get<1>(key)}, {"to", std::get<2>(key)},
                       {"messages", c.messages}, {"bytes", c.bytes}});
  return traffic;
}

nlohmann::json run_party(const PartyOptions& opts) {
  const DeployRun dr = load_deploy_run(opts.config);
  if (is_federated(dr.deploy)) return run_fed_party(opts, dr);
  const RunConfig& cfg = dr.run;
  const int n = cfg.parties.n_parties, me = opts.party;
  if (me < 0 || me >= n) throw std::runtime_error("--party must be in [0, " + std::to_string(n) + ")");
  if (n > cfg.model.n_experts)
    throw std::runtime_error("need parties.n_parties <= model.n_experts (" + std::to_string(cfg.model.n_experts) + ")");
  if (cfg.privacy.enabled)
    throw std::runtime_error("DP-SGD (the privacy section) runs in `pcmoe collab` only; deployed parties do not "
                             "carry per-unit turns yet");
  const std::string name = dr.deploy.parties[me].name;
  std::optional<TlsFiles> tls;
  if (!opts.insecure) tls = read_tls_files(opts.certs_dir, name);
  set_num_threads(cfg.train.threads);
  fs::create_directories(opts.out_dir);

  GrpcTransport net(dr.deploy, me, tls);  // refuses --insecure off loopback before any work
  const CollabData data = load_collab_data(cfg, me);
  const PartyStreams& own = data.parties[me];
  CollabParty party(cfg.model, cfg.train, net, me, n, 0, {}, parse_wire_dtype(cfg.collab.wire_dtype));
  if (!cfg.collab.init_from.empty()) {
    load_checkpoint(cfg.collab.init_from, cfg.model, party.backbone, nullptr);
    load_checkpoint(cfg.collab.init_from, cfg.model, party.host.params(), nullptr);
  }
  const fs::path ckpt = fs::path(opts.out_dir) / "checkpoint";
  const std::string hash = config_hash(cfg);
  int64_t first_turn = 0;
  if (opts.resume) {
    std::ifstream in(ckpt / "state.json");
    if (!in) throw std::runtime_error("--resume: no checkpoint in " + ckpt.string());
    const nlohmann::json state = nlohmann::json::parse(in);
    if (state.at("config_hash") != hash)
      throw std::runtime_error("--resume: the checkpoint in " + ckpt.string() + " was made with another model or train config");
    party.turns = load_checkpoint((ckpt / "backbone").string(), cfg.model, party.backbone, &party.optimizer);
    load_checkpoint((ckpt / "shard").string(), cfg.model, party.host.params(), &party.host.optimizer());
    first_turn = state.at("next_turn").get<int64_t>();
  }
  const int64_t end_turn = (int64_t)n * (opts.until >= 0 ? std::min<int64_t>(opts.until, cfg.train.steps) : cfg.train.steps);
  if (first_turn >= end_turn)
    throw std::runtime_error("nothing to train: the run is at turn " + std::to_string(first_turn) + " of " +
                             std::to_string(end_turn));
  net.count_turns_below((uint64_t)end_turn);  // the report's traffic is training traffic, as in collab
  const int threads = cfg.train.threads;
  net.serve(me, [&party, threads](MsgKind kind, int from, const Bytes& req) {
    set_num_threads(threads);  // a server thread: the host computes with the run's thread count
    return party.host.handle(kind, from, req);
  });
  std::unique_ptr<CoordinatorService> coordinator;
  if (me == 0)
    coordinator = std::make_unique<CoordinatorService>(dr.deploy, net.secure(), hash, cfg.train.seed, first_turn, end_turn);
  net.start(coordinator.get());
  std::fprintf(stderr, "%s: serving experts on %s (%s), joining %s at %s\n", name.c_str(), dr.deploy.parties[me].address.c_str(),
               net.secure() ? "mutual TLS" : "INSECURE plaintext", dr.deploy.parties[0].name.c_str(),
               dr.deploy.parties[0].address.c_str());

  CoordinatorClient coord(net, me);
  std::ofstream metrics(fs::path(opts.out_dir) / "metrics.jsonl", opts.resume ? std::ios::app : std::ios::trunc);
  nlohmann::json report = {{"party", me}, {"name", name}, {"parties", n}};
  coord.start_heartbeat();
  try {
    coord.join(hash, first_turn, end_turn);
    std::fprintf(stderr, "%s: all %d parties joined\n", name.c_str(), n);
    const TurnPlan plan(cfg.model, n);
    std::vector<int32_t> windows((size_t)cfg.train.grad_accum * cfg.train.batch_size * (cfg.model.seq_len + 1));
    const auto t0 = clock_type::now();
    double busy = 0;
    int64_t trained = 0;  // turns of this run (a resumed party's earlier ones are in party.turns)
    for (;;) {
      const Turn t = coord.next_turn();
      if (t.done) break;
      const auto t_turn = clock_type::now();
      fill_turn(cfg, own, (int64_t)t.round, windows.data());
      net.set_step(t.turn);
      const TurnResult r = run_turn(party, net, cfg.train, plan, windows.data());
      busy += std::chrono::duration<double>(clock_type::now() - t_turn).count();
      ++trained;
      metrics << nlohmann::json{{"mode", "pc-moe"}, {"round", t.round}, {"party", me}, {"loss", r.loss.total},
                                {"ce", r.loss.ce}, {"lr", r.lr}, {"grad_norm", r.grad_norm}, {"turn", t.turn}}.dump()
              << "\n";
      metrics.flush();
      coord.turn_done(t.turn, r.loss.total);
      std::fprintf(stderr, "%s: turn %llu (round %llu) loss %.4f\n", name.c_str(), (unsigned long long)t.turn,
                   (unsigned long long)t.round, r.loss.ce);
    }
    coord.barrier("trained");
    const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    const TrafficStats training = net.traffic();  // every training call to or from this party is done
                                                  // (later calls to its host are not counted)
    fs::remove(ckpt / "state.json");  // until both parts are written, there is no checkpoint to resume from
    save_checkpoint((ckpt / "backbone").string(), cfg, party.backbone, &party.optimizer, party.turns, data.tokenizer_model);
    save_checkpoint((ckpt / "shard").string(), cfg, party.host.params(), &party.host.optimizer(), party.turns,
                    data.tokenizer_model);
    std::ofstream(ckpt / "state.json.tmp") << nlohmann::json{{"next_turn", end_turn}, {"config_hash", hash}}.dump() << "\n";
    fs::rename(ckpt / "state.json.tmp", ckpt / "state.json");  // last: names a complete checkpoint
    net.set_step((uint64_t)end_turn);  // evaluation calls come after every turn
    report["val_loss_own"] = evaluate(party.model, own.val_windows, own.n_val);
    coord.barrier("finished");
    coord.stop_heartbeat();
    if (coordinator) coordinator->wait_released("finished", dr.deploy.call_timeout_s);
    const double tokens = (double)trained * data.tokens_per_turn;
    report["turns"] = trained;
    report["turns_total"] = party.turns;
    report["tokens"] = tokens;
    report["train_seconds"] = seconds;
    report["own_turn_seconds"] = busy;
    report["tokens_per_s_own_turns"] = busy > 0 ? tokens / busy : 0.0;
    report["bytes_sent"] = training.bytes_sent(me);
    report["bytes_received"] = training.bytes_received(me);
    report["bytes_sent_per_token"] = training.bytes_sent(me) / tokens;
    report["bytes_received_per_token"] = training.bytes_received(me) / tokens;
    report["traffic"] = traffic_json(training);
    report["transport"] = net.secure() ? "grpc+mtls" : "grpc-insecure";
    report["wire_dtype"] = cfg.collab.wire_dtype;
    report["peak_rss_bytes"] = peak_rss_bytes();  // this party's process, to set beside a centralised one
  } catch (const std::exception& e) {
    coord.stop(e.what());
    if (coordinator) coordinator->linger_until_told(2.0);  // let the others hear why before going down
    coord.stop_heartbeat();
    net.shutdown();  // before the coordinator service it serves is destroyed
    throw;
  }
  net.shutdown();
  std::ofstream(fs::path(opts.out_dir) / "report.json") << report.dump(2) << "\n";
  return report;
}

nlohmann::json run_launch(const std::string& exe, const std::string& config, const std::string& out_dir, bool insecure,
                          bool resume, int64_t until) {
  const DeployRun dr = load_deploy_run(config);
  if (dr.run.privacy.enabled)
    throw std::runtime_error("DP-SGD (the privacy section) runs in `pcmoe collab` only; deployed parties do not "
                             "carry per-unit turns yet");
  const int n = dr.run.parties.n_parties;
  const int processes = (int)dr.deploy.parties.size();  // the parties and a separate federated server
  const bool federated = is_federated(dr.deploy);
  if (federated && (resume || until >= 0))
    throw std::runtime_error("--resume and --until are for pc-moe deployments; deploy.mode " + dr.deploy.mode +
                             " runs every round in one go");
  for (const PartyAddress& p : dr.deploy.parties)
    if (!is_loopback_host(address_host(p.address)))
      throw std::runtime_error("launch starts every party on this machine, but " + p.name + " is at " + p.address +
                               "; run `pcmoe party` on each host instead");
  fs::create_directories(out_dir);
  const std::string certs = (fs::path(out_dir) / "certs").string();
  if (!insecure && !resume) make_certs(dr.deploy, certs);
  // The parties share this machine's cores: OpenMP threads spinning while they wait would take
  // them from each other (runs 3-10x slower), so they sleep instead, unless the user chose.
  setenv("OMP_WAIT_POLICY", "passive", 0);
  const auto t0 = clock_type::now();
  const auto label = [n](int p) { return p < n ? "party" + std::to_string(p) : std::string("server"); };
  std::vector<pid_t> pids(processes);
  for (int p = 0; p < processes; ++p) {
    const std::string log = (fs::path(out_dir) / (label(p) + ".log")).string();
    const std::string dir = (fs::path(out_dir) / label(p)).string();
    std::vector<std::string> args = {exe, "server", "--config", config, "--out", dir};
    if (p < n) args = {exe, "party", "--config", config, "--party", std::to_string(p), "--out", dir};
    if (resume) args.push_back("--resume");
    if (until >= 0) args.insert(args.end(), {"--until", std::to_string(until)});
    if (insecure) args.push_back("--insecure");
    else args.insert(args.end(), {"--certs", certs});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    const int rc = posix_spawn(&pids[p], exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      for (int q = 0; q < p; ++q) kill(pids[q], SIGKILL);
      throw std::runtime_error("cannot start " + label(p) + ": " + std::strerror(rc));
    }
    std::fprintf(stderr, "launch: %s (%s at %s) is pid %d, log %s\n", label(p).c_str(), dr.deploy.parties[p].name.c_str(),
                 dr.deploy.parties[p].address.c_str(), (int)pids[p], log.c_str());
  }
  nlohmann::json report = {{"parties", nlohmann::json::array()}, {"ok", true}, {"mode", dr.deploy.mode}};
  std::vector<int> codes(processes, -1);
  for (int left = processes; left > 0; --left) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) throw std::runtime_error("waiting for the parties failed");
    const int p = int(std::find(pids.begin(), pids.end(), pid) - pids.begin());
    if (p == processes) {
      ++left;
      continue;
    }
    codes[p] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::fprintf(stderr, "launch: %s exited with %d\n", label(p).c_str(), codes[p]);
  }
  const double wall = std::chrono::duration<double>(clock_type::now() - t0).count();
  std::vector<nlohmann::json> lines;
  for (int p = 0; p < processes; ++p) {
    nlohmann::json pr = {{"exit_code", codes[p]}};
    const fs::path dir = fs::path(out_dir) / label(p);
    std::ifstream rep(dir / "report.json");
    if (codes[p] == 0 && rep) pr["report"] = nlohmann::json::parse(rep);
    std::ifstream m(dir / "metrics.jsonl");
    for (std::string line; std::getline(m, line);)
      if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
    if (codes[p] != 0) report["ok"] = false;
    if (p < n) {
      pr["party"] = p;
      report["parties"].push_back(pr);
    } else {
      report["server"] = pr;
    }
  }
  // collab's order: PC-MoE's turns as handed out; a federated round's lines in party order.
  const auto order = [](const nlohmann::json& m) {
    return m.contains("turn") ? std::make_pair(m["turn"].get<int64_t>(), 0)
                              : std::make_pair(m["round"].get<int64_t>(), m["party"].get<int>());
  };
  std::sort(lines.begin(), lines.end(),
            [&](const nlohmann::json& a, const nlohmann::json& b) { return order(a) < order(b); });
  std::ofstream merged(fs::path(out_dir) / "metrics.jsonl", std::ios::trunc);
  for (const nlohmann::json& t : lines) merged << t.dump() << "\n";
  // A line is a turn of one optimizer step, or a round of fed.local_steps steps.
  const double steps_per_line = federated ? dr.run.fed.local_steps : 1;
  const double tokens =
      (double)lines.size() * steps_per_line * dr.run.train.grad_accum * dr.run.train.batch_size * dr.run.model.seq_len;
  report[federated ? "party_rounds" : "turns"] = lines.size();
  report["wall_seconds"] = wall;
  report["tokens"] = tokens;
  report["tokens_per_s"] = wall > 0 ? tokens / wall : 0.0;
  std::ofstream(fs::path(out_dir) / "report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace pcmoe::net
