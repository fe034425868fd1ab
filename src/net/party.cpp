#include "net/party.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include "collab/recorder.h"
#include "collab/runner.h"
#include "collab/session.h"
#include "common/stopwatch.h"
#include "net/certs.h"
#include "net/coordinator.h"
#include "net/deploy.h"
#include "net/fed_deploy.h"
#include "net/grpc_transport.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace pcmoe::net {

using clock_type = std::chrono::steady_clock;

nlohmann::json traffic_report(const TrafficStats& stats, int me, double tokens) {
  nlohmann::json traffic = nlohmann::json::array();
  for (const auto& [key, c] : stats.by_kind_pair)
    traffic.push_back({{"kind", to_string(std::get<0>(key))}, {"from", std::get<1>(key)}, {"to", std::get<2>(key)},
                       {"messages", c.messages}, {"bytes", c.bytes}});
  return {{"bytes_sent", stats.bytes_sent(me)},
          {"bytes_received", stats.bytes_received(me)},
          {"bytes_sent_per_token", stats.bytes_sent(me) / tokens},
          {"bytes_received_per_token", stats.bytes_received(me) / tokens},
          {"traffic", traffic}};
}

void abandon_run(CoordinatorClient& coord, CoordinatorService* coordinator, GrpcTransport& net, const std::string& why) {
  coord.stop(why);
  if (coordinator) coordinator->linger_until_told(2.0);  // let the others hear why before going down
  coord.stop_heartbeat();
  net.shutdown();  // before the coordinator service it serves is destroyed
}

namespace {

// A party's checkpoints: <out>/checkpoint/turn<t>/ holds backbone, shard and state.json (written
// last: its presence names a complete checkpoint) of the state after turns 0 .. t-1.
fs::path checkpoint_dir(const fs::path& root, int64_t turn) { return root / ("turn" + std::to_string(turn)); }

// The turns of the complete checkpoints under `root`, newest first; one made with another
// config is refused.
std::vector<int64_t> complete_checkpoints(const fs::path& root, const std::string& hash) {
  std::vector<int64_t> turns;
  if (!fs::is_directory(root)) return turns;
  for (const fs::directory_entry& e : fs::directory_iterator(root)) {
    std::ifstream in(e.path() / "state.json");
    if (e.path().filename().string().rfind("turn", 0) != 0 || !in) continue;
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(in);
      if (state.at("config_hash") != hash)
        throw std::runtime_error("the checkpoint in " + e.path().string() + " was made with another config");
      turns.push_back(state.at("next_turn").get<int64_t>());
    } catch (const nlohmann::json::exception& x) {
      throw std::runtime_error("unreadable checkpoint state " + (e.path() / "state.json").string() + ": " + x.what());
    }
  }
  std::sort(turns.rbegin(), turns.rend());
  return turns;
}

void save_party_checkpoint(const fs::path& root, int64_t turn, const RunConfig& cfg, CollabParty& party,
                           const std::string& hash, const std::string& tokenizer_model) {
  const fs::path dir = checkpoint_dir(root, turn);
  fs::remove(dir / "state.json");  // until both parts are written, there is no checkpoint here
  fs::create_directories(dir);
  save_checkpoint((dir / "backbone").string(), to_json(cfg), party.backbone, &party.optimizer, party.turns, tokenizer_model);
  save_checkpoint((dir / "shard").string(), to_json(cfg), party.host.params(), &party.host.optimizer(), party.turns, tokenizer_model);
  std::ofstream(dir / "state.json.tmp") << nlohmann::json{{"next_turn", turn}, {"config_hash", hash}}.dump() << "\n";
  fs::rename(dir / "state.json.tmp", dir / "state.json");
}

// Once every party holds the checkpoint at `keep`, the others are of no use (older) or of
// another course of the run (newer ones some party did not complete).
void drop_checkpoints_but(const fs::path& root, int64_t keep) {
  if (!fs::is_directory(root)) return;
  const std::string name = checkpoint_dir(root, keep).filename().string();
  std::vector<fs::path> others;
  for (const fs::directory_entry& e : fs::directory_iterator(root))
    if (e.path().filename().string().rfind("turn", 0) == 0 && e.path().filename() != name) others.push_back(e.path());
  for (const fs::path& p : others) fs::remove_all(p);
}

// Keeps the lines of a resumed party's metrics for turns before `first`: the turns from there
// on are trained again.
void keep_metrics_before(const fs::path& path, int64_t first) {
  std::ifstream in(path);
  std::string kept;
  for (std::string line; std::getline(in, line);)
    if (!line.empty() && nlohmann::json::parse(line).at("turn").get<int64_t>() < first) kept += line + "\n";
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

// Seconds since this process started (the kernel's start time, in clock ticks since boot).
double seconds_since_process_start() {
  std::ifstream stat("/proc/self/stat"), uptime("/proc/uptime");
  std::string line;
  std::getline(stat, line);
  std::istringstream fields(line.substr(line.rfind(')') + 2));  // fields 3.. (the name may hold spaces)
  std::string field;
  for (int i = 3; i <= 22 && fields >> field;) ++i;
  double up = 0;
  uptime >> up;
  return up - std::stod(field) / (double)sysconf(_SC_CLK_TCK);
}

// CPU seconds this process has used (user and system): its start-up cost whatever the load.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + (double)u.ru_stime.tv_sec + 1e-6 * (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// What a party's training loop and its save points share; everything in it is run_party's.
struct PartyRun {
  const RunConfig& cfg;
  const DeployRun& dr;
  const std::string& name;
  int me, n;
  GrpcTransport& net;
  CollabParty& party;
  CoordinatorClient& coord;
  const CollabData& data;
  const fs::path &ckpt, &audit_dir;
  const std::string& hash;
  bool observer;  // this party records the audit (and saves its backbone in the views)
  int64_t end_turn;
};

// What the training loop did in this process.
struct TurnsDone {
  double seconds = 0, busy = 0;  // the loop's wall time; the time in this party's own turns
  int64_t trained = 0;           // turns of this run (a resumed party's earlier ones are in party.turns)
};

// Rejects a config a deployed pc-moe party cannot run.
void check_party_config(const RunConfig& cfg, int me, int n) {
  if (me < 0 || me >= n) throw std::runtime_error("--party must be in [0, " + std::to_string(n) + ")");
  if (n > cfg.model.n_experts)
    throw std::runtime_error("need parties.n_parties <= model.n_experts (" + std::to_string(cfg.model.n_experts) + ")");
  if (cfg.privacy.enabled)
    throw std::runtime_error("DP-SGD (the privacy section) runs in `pcmoe collab` only; deployed parties do not "
                             "carry per-unit turns yet");
}

// The leakage audit's recording side (docs/audit.md).
struct PartyAudit {
  std::unique_ptr<Recorder> recorder;
  std::unique_ptr<SentTruthWriter> sent_truth;
  std::mutex mu;
};

// The observer records what it receives; every other party keeps the truth of the expert requests
// it sends the observer (the scorer's, not the observer's).
void start_audit_tap(PartyAudit& audit, GrpcTransport& net, CollabParty& party, const RunConfig& cfg, int me, int n,
                     const fs::path& audit_dir, bool resume) {
  if (resume)
    throw std::runtime_error("an audited deployment (the audit section) cannot be resumed: its recording covers one "
                             "unbroken run");
  const int observer = cfg.audit.observer;
  if (me == observer) {
    audit.recorder = std::make_unique<Recorder>(audit_dir.string(), observer, n, run_fingerprint(to_json(cfg)));
    if (party.host.schedule() == Schedule::kConcurrent) audit.recorder->hold_until_flush();
  } else {
    audit.sent_truth = std::make_unique<SentTruthWriter>(audit_dir.string());
  }
  const Tap record = audit.recorder ? audit.recorder->tap() : Tap{};
  net.set_tap([&audit, &net, &party, &cfg, me, n, observer, record](MsgKind kind, int from, int to, bool is_response,
                                                                     const Bytes& payload) {
    std::lock_guard<std::mutex> lock(audit.mu);
    // A request to this party's host is of the host's turn (a peer's step label is not trusted).
    const uint64_t step = to == me && !is_response ? party.host.turn() : net.step();
    const int64_t round = (int64_t)step / n;
    const bool recorded = round < cfg.train.steps && recorded_round(cfg.audit, cfg.train.steps, round);
    if (audit.recorder) {
      audit.recorder->set_round(round, recorded);
      record(kind, from, to, is_response, payload);
    } else if (recorded && to == observer && is_expert_request(kind, is_response)) {
      audit.sent_truth->add(round, kind, expert_call_truth(party.model, payload, observer, n));
    }
  });
}

// Every party checkpoints at the same turns: once all turns before one are done (barrier), each
// saves, and once all have saved (barrier), each drops its older checkpoints.
void checkpoint_at(const PartyRun& r, int64_t turn) {
  r.coord.barrier("checkpoint " + std::to_string(turn));
  save_party_checkpoint(r.ckpt, turn, r.cfg, r.party, r.hash, r.data.tokenizer_model);
  r.coord.barrier("saved " + std::to_string(turn));
  drop_checkpoints_but(r.ckpt, turn);
  std::fprintf(stderr, "%s: checkpoint at turn %lld\n", r.name.c_str(), (long long)turn);
}

// The audit's views: at each recorded round's start every party saves its shard, the observer its
// backbone too, while no turn runs.
int64_t next_view_from(const PartyRun& r, int64_t turn) {
  for (int64_t round = (turn + r.n - 1) / r.n; r.cfg.audit.enabled && round < r.cfg.train.steps; ++round)
    if (recorded_round(r.cfg.audit, r.cfg.train.steps, round)) return round * r.n;
  return r.end_turn;
}

void save_view(const PartyRun& r, int64_t turn) {
  const std::string round = std::to_string(turn / r.n);
  r.coord.barrier("view " + round);
  save_checkpoint((r.audit_dir / ("shard_r" + round)).string(), to_json(r.cfg), r.party.host.params(), nullptr, turn / r.n, "");
  if (r.observer)
    save_checkpoint((r.audit_dir / ("backbone_r" + round)).string(), to_json(r.cfg), r.party.backbone, nullptr, turn / r.n,
                    r.data.tokenizer_model);
  r.coord.barrier("view saved " + round);
}

// This party's turn `mine`, once the coordinator hands it out; returns its seconds.
double train_own_turn(const PartyRun& r, const TurnPlan& plan, int64_t mine, int32_t* windows, std::ostream& metrics) {
  const Turn t = r.coord.next_turn();
  if (t.done || (int64_t)t.turn != mine)
    throw std::runtime_error("the coordinator handed out turn " + std::to_string(t.turn) + ", this party's next is " +
                             std::to_string(mine));
  const auto t_turn = clock_type::now();
  fill_turn(r.cfg, r.data.parties[r.me], (int64_t)t.round, windows);
  r.net.set_step(t.turn);
  const TurnResult res = run_turn(r.party, r.net, r.cfg.train, plan, (int64_t)t.turn, windows);
  const double seconds = seconds_since(t_turn);
  metrics << nlohmann::json{{"mode", "pc-moe"}, {"round", t.round}, {"party", r.me}, {"loss", res.loss.total},
                            {"ce", res.loss.ce}, {"lr", res.lr}, {"grad_norm", res.grad_norm}, {"turn", t.turn}}.dump()
          << "\n";
  metrics.flush();
  r.coord.turn_done(t.turn);
  std::fprintf(stderr, "%s: turn %llu (round %llu) loss %.4f\n", r.name.c_str(), (unsigned long long)t.turn,
               (unsigned long long)t.round, res.loss.ce);
  return seconds;
}

// Turns first_turn .. end_turn-1 in the seeded order: this party's own, with the checkpoints and
// audit views that fall before each, then every party's barrier "trained".
TurnsDone train_turns(const PartyRun& r, int64_t first_turn, const fs::path& metrics_path) {
  std::ofstream metrics(metrics_path, first_turn > 0 ? std::ios::app : std::ios::trunc);
  const TurnPlan plan(r.cfg.model, r.n);
  std::vector<int32_t> windows((size_t)r.cfg.train.grad_accum * r.cfg.train.batch_size * (r.cfg.model.seq_len + 1));
  const int64_t every = (int64_t)r.dr.deploy.checkpoint_every * r.n;
  int64_t next_checkpoint = every > 0 ? (first_turn / every + 1) * every : r.end_turn;
  int64_t next_view = next_view_from(r, first_turn);
  const auto t0 = clock_type::now();
  TurnsDone done;
  for (int64_t from = first_turn;;) {
    const int64_t mine = next_turn_of(r.cfg.train.seed, r.n, r.me, from, r.end_turn, r.party.host.schedule());
    for (int64_t stop; (stop = std::min(next_checkpoint, next_view)) < r.end_turn && stop <= mine;) {
      if (stop == next_view) {
        save_view(r, stop);
        next_view = next_view_from(r, stop + 1);
      }
      if (stop == next_checkpoint) {
        checkpoint_at(r, stop);
        next_checkpoint += every;
      }
    }
    if (mine >= r.end_turn) break;
    done.busy += train_own_turn(r, plan, mine, windows.data(), metrics);
    ++done.trained;
    from = mine + 1;
  }
  r.coord.barrier("trained");
  done.seconds = seconds_since(t0);
  return done;
}

}  // namespace

nlohmann::json run_party(const PartyOptions& opts) {
  const DeployRun dr = load_deploy_run(opts.config);
  if (is_federated(dr.deploy)) return run_fed_party(opts, dr);
  const RunConfig& cfg = dr.run;
  const int n = cfg.parties.n_parties, me = opts.party;
  check_party_config(cfg, me, n);
  const std::string name = dr.deploy.parties[me].name;
  std::optional<TlsFiles> tls;
  if (!opts.insecure) tls = read_tls_files(opts.certs_dir, name);
  set_num_threads(cfg.train.threads);
  fs::create_directories(opts.out_dir);

  GrpcTransport net(dr.deploy, me, tls);  // refuses --insecure off loopback before any work
  const CollabData data = load_collab_data(cfg, me, true);
  const PartyStreams& own = data.parties[me];
  const Schedule schedule = parse_schedule(cfg.collab.schedule);
  CollabParty party(cfg.model, cfg.train, net, me, n, 0, {}, parse_wire_dtype(cfg.collab.wire_dtype),
                    parse_exchange(cfg.collab.exchange), schedule);
  party.expert_lr_scale = cfg.collab.expert_lr_scale;
  if (!cfg.collab.init_from.empty()) {
    InitSource init(cfg.collab.init_from, cfg.model);  // from a Hugging Face directory: only these tensors
    init.load(party.backbone);
    init.load(party.host.params());
  }
  const fs::path ckpt = fs::path(opts.out_dir) / "checkpoint";
  const SectionHashes sections = section_hashes(dr);
  const std::string hash = config_hash(sections);
  const std::vector<int64_t> offered = complete_checkpoints(ckpt, hash);
  if (opts.resume && offered.empty()) throw std::runtime_error("--resume: no checkpoint in " + ckpt.string());
  if (!opts.resume && !offered.empty())
    throw std::runtime_error(ckpt.string() + " holds a checkpoint of an earlier run (turn " + std::to_string(offered[0]) +
                             "): pass --resume to continue it, or give another --out");
  const int64_t end_turn = (int64_t)n * (opts.until >= 0 ? std::min<int64_t>(opts.until, cfg.train.steps) : cfg.train.steps);
  net.count_turns_below((uint64_t)end_turn);  // the report's traffic is training traffic, as in collab
  // The leakage audit (docs/audit.md): at each recorded round's start all save their state for the
  // audit's views.
  const fs::path audit_dir = fs::path(opts.out_dir) / "audit";
  PartyAudit audit;
  if (cfg.audit.enabled) start_audit_tap(audit, net, party, cfg, me, n, audit_dir, opts.resume);
  std::unique_ptr<CoordinatorService> coordinator;
  if (me == 0)
    coordinator =
        std::make_unique<CoordinatorService>(dr.deploy, net.secure(), sections, cfg.train.seed, end_turn, schedule);
  net.start(coordinator.get());
  std::fprintf(stderr, "%s: listening on %s (%s) %.2f s after this process started (%.2f s of CPU), joining %s at %s\n",
               name.c_str(), dr.deploy.parties[me].address.c_str(), net.secure() ? "mutual TLS" : "INSECURE plaintext",
               seconds_since_process_start(), cpu_seconds(), dr.deploy.parties[0].name.c_str(),
               dr.deploy.parties[0].address.c_str());

  CoordinatorClient coord(net, me);
  const fs::path metrics_path = fs::path(opts.out_dir) / "metrics.jsonl";
  nlohmann::json report = {{"party", me}, {"name", name}, {"parties", n}};
  coord.start_heartbeat();
  try {
    const int64_t first_turn =
        offered.empty() ? coord.join(sections, 0, 0, end_turn)
                        : coord.join(sections, offered[0], offered[std::min<size_t>(1, offered.size() - 1)], end_turn);
    report["started_to_joined_s"] = seconds_since_process_start();
    report["started_to_joined_cpu_s"] = cpu_seconds();
    if (first_turn > 0) {
      const fs::path dir = checkpoint_dir(ckpt, first_turn);
      party.turns = load_checkpoint((dir / "backbone").string(), cfg.model, party.backbone, &party.optimizer);
      load_checkpoint((dir / "shard").string(), cfg.model, party.host.params(), &party.host.optimizer());
      drop_checkpoints_but(ckpt, first_turn);
      keep_metrics_before(metrics_path, first_turn);
    }
    // The host serves only once its state is the agreed turn's (until then calls are refused
    // UNAVAILABLE), and every party's host does before any turn starts.
    party.host.start_at((uint64_t)first_turn);
    const int threads = cfg.train.threads;
    const Handler host = [&party, threads](MsgKind kind, int from, const Bytes& req) {
      set_num_threads(threads);  // a server thread: the host computes with the run's thread count
      return party.host.handle(kind, from, req);
    };
    // Concurrent rounds: the host serves every party's calls as they come, its own party's among
    // them, keeping each caller's turn apart itself.
    if (schedule == Schedule::kConcurrent) net.serve_concurrently(me, host);
    else net.serve(me, host);
    coord.barrier("serving");
    std::fprintf(stderr, "%s: all %d parties joined, %.2f s after this process started; training turns %lld..%lld\n",
                 name.c_str(), n, report["started_to_joined_s"].get<double>(), (long long)first_turn, (long long)end_turn - 1);
    const PartyRun run{cfg, dr, name, me, n, net, party, coord, data, ckpt, audit_dir, hash,
                       audit.recorder != nullptr, end_turn};
    const TurnsDone done = train_turns(run, first_turn, metrics_path);
    if (audit.recorder) {
      std::lock_guard<std::mutex> lock(audit.mu);
      audit.recorder->flush();  // what a concurrent last round left held
    }
    const TrafficStats training = net.traffic();  // every training call to or from this party is done
                                                  // (later calls to its host are not counted)
    save_party_checkpoint(ckpt, end_turn, cfg, party, hash, data.tokenizer_model);
    net.set_step((uint64_t)end_turn);  // evaluation calls come after every turn
    report["val_loss_own"] = evaluate(party.model, own.val_windows, own.n_val);
    coord.barrier("finished");  // every party has saved its checkpoint at end_turn
    drop_checkpoints_but(ckpt, end_turn);
    coord.stop_heartbeat();
    if (coordinator) coordinator->wait_released("finished", dr.deploy.call_timeout_s);
    const double tokens = (double)done.trained * data.tokens_per_turn;
    report["turns"] = done.trained;
    report["turns_total"] = party.turns;
    report["tokens"] = tokens;
    report["train_seconds"] = done.seconds;
    report["own_turn_seconds"] = done.busy;
    report["tokens_per_s_own_turns"] = done.busy > 0 ? tokens / done.busy : 0.0;
    report.update(traffic_report(training, me, tokens));
    report["transport"] = net.secure() ? "grpc+mtls" : "grpc-insecure";
    report["wire_dtype"] = cfg.collab.wire_dtype;
    report["exchange"] = cfg.collab.exchange;
    report["peak_rss_bytes"] = peak_rss_bytes();  // this party's process, to set beside a centralised one
  } catch (const std::exception& e) {
    abandon_run(coord, coordinator.get(), net, e.what());
    throw;
  }
  net.shutdown();
  std::ofstream(fs::path(opts.out_dir) / "report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace pcmoe::net
