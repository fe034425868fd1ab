// `pcmoe memory`: the real peak memory of ONE party of an n-party PC-MoE, measured in its own
// process under real traffic. Party p lives in this process; the other parties (backbones, hosts
// and weights all real) live in one forked process, and every party trains its turns in the
// collab schedule's order: p's host serves every party's expert calls and p's model gets real
// expert outputs, as in a deployment, while this process holds p's memory alone.
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "collab/expert_host.h"
#include "collab/run_config.h"
#include "collab/schedule.h"
#include "collab/session.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/step.h"
#include "train/trainer.h"

using namespace pcmoe;

namespace {

constexpr const char* kMemoryUsage = "usage: pcmoe memory --config FILE --parties N [--party P]\n";

struct MemoryUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int parse_int(const std::string& key, const std::string& text) {
  try {
    size_t used = 0;
    const int v = std::stoi(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw MemoryUsageError(key + " expects an integer, got '" + text + "'");
}

// One frame between the two processes: a header, then `size` payload bytes.
enum class Frame : uint8_t { kCall, kReply, kError, kTurn, kDone, kQuit };
struct Header {
  Frame type;
  MsgKind kind;
  int32_t from, to;  // kCall: caller and callee; kTurn: global turn `from` is party `to`'s
  uint64_t size;
};

// The transport of one of the two processes: the parties `here` are served in this process, the
// others on the far side of a socket. Calls alternate strictly (one turn at a time, and a host
// makes no calls), so each side is reading whenever the other writes.
class SplitTransport final : public Transport {
 public:
  SplitTransport(int fd, std::vector<bool> here) : fd_(fd), here_(std::move(here)) {}

  void serve(int party, Handler handler) override { handlers_[party] = std::move(handler); }

  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override {
    if (from == to) return handlers_.at(to)(kind, from, request);  // not a boundary
    if (here_.at(to)) {
      Bytes response = handlers_.at(to)(kind, from, Bytes(request));  // the copy a network would make
      count(kind, from, to, request.size(), response.size());
      return response;
    }
    send({Frame::kCall, kind, from, to, request.size()}, request);
    Header h;
    Bytes response = serve_until_command(h);
    if (h.type != Frame::kReply) throw std::runtime_error("the other process answered a call out of turn");
    count(kind, from, to, request.size(), response.size());
    return response;
  }

  // Serves the far side's calls into this process's hosts until it sends anything else; returns
  // that frame's payload (its header in h). The far side's errors are thrown here.
  Bytes serve_until_command(Header& h) {
    for (;;) {
      Bytes payload = receive(h);
      if (h.type == Frame::kError) {
        const std::string what(reinterpret_cast<const char*>(payload.data()), payload.size());
        throw std::runtime_error(what);
      }
      if (h.type != Frame::kCall) return payload;
      Bytes response;
      try {
        response = handlers_.at(h.to)(h.kind, h.from, payload);
      } catch (const std::exception& e) {
        send_error(e.what());
        continue;
      }
      count(h.kind, h.from, h.to, payload.size(), response.size());
      send({Frame::kReply, h.kind, h.to, h.from, response.size()}, response);
    }
  }

  void send(const Header& h, const Bytes& payload = {}) {
    write_all(&h, sizeof h);
    write_all(payload.data(), payload.size());
  }
  void send_error(const std::string& what) {
    send({Frame::kError, MsgKind::kControl, 0, 0, what.size()},
         Bytes(reinterpret_cast<const std::byte*>(what.data()), reinterpret_cast<const std::byte*>(what.data()) + what.size()));
  }

  // The largest payload that crossed between this process's parties and the other's.
  size_t largest_payload() const { return largest_; }

 private:
  void count(MsgKind kind, int from, int to, size_t request, size_t response) {
    stats_.add(kind, from, to, request);
    stats_.add(kind, to, from, response);
    if (here_.at(from) != here_.at(to)) largest_ = std::max({largest_, request, response});
  }
  Bytes receive(Header& h) {
    read_all(&h, sizeof h);
    Bytes payload(h.size);
    read_all(payload.data(), payload.size());
    return payload;
  }
  void write_all(const void* data, size_t n) {
    for (size_t done = 0; done < n;) {
      // MSG_NOSIGNAL: a dead far side is an error here, not a SIGPIPE.
      const ssize_t k = ::send(fd_, static_cast<const char*>(data) + done, n - done, MSG_NOSIGNAL);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) throw std::runtime_error("the other parties' process is gone");
      done += (size_t)k;
    }
  }
  void read_all(void* data, size_t n) {
    for (size_t done = 0; done < n;) {
      const ssize_t k = ::read(fd_, static_cast<char*>(data) + done, n - done);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) throw std::runtime_error("the other parties' process is gone");
      done += (size_t)k;
    }
  }

  int fd_;
  std::vector<bool> here_;
  std::map<int, Handler> handlers_;
  size_t largest_ = 0;
};

// The parties of this process (every party but p in the forked one, p in the measured one), each
// with its host served on `transport`.
std::vector<std::unique_ptr<CollabParty>> build_parties(const RunConfig& cfg, SplitTransport& transport, int n,
                                                        const std::vector<bool>& here) {
  std::vector<std::unique_ptr<CollabParty>> parties(n);
  for (int q = 0; q < n; ++q) {
    if (!here[q]) continue;
    parties[q] = std::make_unique<CollabParty>(cfg.model, cfg.train, transport, q, n, 0, HostPrivacy{},
                                               parse_wire_dtype(cfg.collab.wire_dtype), parse_exchange(cfg.collab.exchange),
                                               parse_schedule(cfg.collab.schedule));
    ExpertHost* host = &parties[q]->host;
    transport.serve(q, [host](MsgKind kind, int from, const Bytes& req) { return host->handle(kind, from, req); });
  }
  return parties;
}

// Global turn `turn` of its holder `party` on random tokens (a stream of its own, whichever
// process runs it).
void random_turn(CollabParty& party, SplitTransport& transport, const RunConfig& cfg, const TurnPlan& plan,
                 int64_t turn) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  std::vector<int32_t> windows((size_t)tc.grad_accum * tc.batch_size * (mc.seq_len + 1));
  Rng rng(splitmix64(tc.seed ^ (uint64_t)party.id) + (uint64_t)party.turns * windows.size());
  for (int32_t& id : windows) id = (int32_t)(rng.next_u64() % (uint64_t)mc.vocab_size);
  run_turn(party, transport, tc, plan, turn, windows.data());
}

constexpr int kRounds = 2;  // every party twice, so that every AdamW state has been written

// The forked process: every party but p; runs the turns it is told to and serves p's calls.
[[noreturn]] void serve_others(int fd, const RunConfig& cfg, int n, int p) {
  std::vector<bool> here(n, true);
  here[p] = false;
  SplitTransport transport(fd, here);
  try {
    set_num_threads(cfg.train.threads);
    std::vector<std::unique_ptr<CollabParty>> parties = build_parties(cfg, transport, n, here);
    const TurnPlan plan(cfg.model, n);
    for (;;) {
      Header h;
      transport.serve_until_command(h);
      if (h.type == Frame::kQuit) ::_exit(0);
      if (h.type != Frame::kTurn || h.to < 0 || h.to >= n || !here[h.to]) throw std::runtime_error("unexpected command");
      random_turn(*parties[h.to], transport, cfg, plan, h.from);
      transport.send({Frame::kDone, MsgKind::kControl, 0, h.to, 0});
    }
  } catch (const std::exception& e) {
    try {
      transport.send_error(std::string("the other parties' process: ") + e.what());
    } catch (const std::exception&) {
    }
  }
  ::_exit(1);
}

int measure(const std::string& config_path, int n, int p) {
  const RunConfig cfg = load_run_config(config_path);
  const ModelConfig& mc = cfg.model;
  if (n > mc.n_experts)
    throw MemoryUsageError("--parties must be at most n_experts (" + std::to_string(mc.n_experts) + ")");

  // Forked before anything is built or any OpenMP region runs (libgomp's pool does not survive
  // a fork), so that each process builds and computes only its own parties.
  int fds[2] = {-1, -1};
  pid_t others = -1;
  if (n > 1) {
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    std::fflush(nullptr);
    others = ::fork();
    if (others < 0) throw std::runtime_error(std::string("cannot fork: ") + std::strerror(errno));
    if (others == 0) {
      ::close(fds[0]);
      serve_others(fds[1], cfg, n, p);
    }
    ::close(fds[1]);
  }
  std::vector<bool> here(n, false);
  here[p] = true;
  SplitTransport transport(fds[0], here);
  set_num_threads(cfg.train.threads);
  std::vector<std::unique_ptr<CollabParty>> parties = build_parties(cfg, transport, n, here);
  CollabParty& party = *parties[p];
  const TurnPlan plan(mc, n);
  // Concurrent rounds run here one turn after another, in party order: what a host holds is the
  // same (every party's slot stays allocated), and a round's result does not depend on the order.
  for (int64_t turn = 0; turn < kRounds * n; ++turn) {
    const int q = turn_holder(cfg.train.seed, n, turn, parse_schedule(cfg.collab.schedule));
    if (q == p) {
      random_turn(party, transport, cfg, plan, turn);
      continue;
    }
    transport.send({Frame::kTurn, MsgKind::kControl, (int32_t)turn, q, 0});
    Header h;
    transport.serve_until_command(h);
    if (h.type != Frame::kDone) throw std::runtime_error("the other parties' process answered a turn out of order");
  }
  if (n > 1) {
    transport.send({Frame::kQuit, MsgKind::kControl, 0, 0, 0});
    int status = 0;
    while (::waitpid(others, &status, 0) < 0 && errno == EINTR) {
    }
    ::close(fds[0]);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("the other parties' process failed");
  }

  const size_t total = layout_numel(param_layout(mc, ParamSelection{}));
  const size_t experts = total - layout_numel(param_layout(mc, backbone_selection()));
  // The parties p's host served: ran its experts on their hidden states, or handed them its weights.
  std::vector<int> served;
  for (const auto& [key, count] : transport.stats().by_kind_pair)
    if ((std::get<0>(key) == MsgKind::kExpertForward || std::get<0>(key) == MsgKind::kExpertWeights) &&
        std::get<2>(key) == p && std::get<1>(key) != p)
      served.push_back(std::get<1>(key));
  const nlohmann::json out = {{"parties", n},
                              {"party", p},
                              {"exchange", cfg.collab.exchange},
                              {"schedule", cfg.collab.schedule},
                              {"arena_bytes", party_memory(party, 2 * transport.largest_payload())},
                              {"peak_rss_bytes", peak_rss_bytes()},
                              {"bytes_sent", transport.stats().bytes_sent(p)},
                              {"bytes_received", transport.stats().bytes_received(p)},
                              {"served_parties", served},
                              {"parameters_total", total},
                              {"expert_fraction", (double)experts / (double)total}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int cmd_memory(int argc, char** argv) {
  try {
    std::string config;
    std::optional<int> n;
    int p = 0;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a != "--config" && a != "--parties" && a != "--party") throw MemoryUsageError("unknown argument '" + a + "'");
      if (i + 1 >= argc) throw MemoryUsageError(a + " needs a value");
      const std::string v = argv[++i];
      if (a == "--config") config = v;
      else if (a == "--parties") n = parse_int(a, v);
      else p = parse_int(a, v);
    }
    if (config.empty()) throw MemoryUsageError("missing --config");
    if (!n) throw MemoryUsageError("missing --parties");
    if (*n < 1) throw MemoryUsageError("--parties must be at least 1");
    if (p < 0 || p >= *n) throw MemoryUsageError("--party must be in [0, --parties)");
    // The two processes take turns on the same cores: OpenMP threads spinning while they wait
    // would take the cores from each other (runs 3-10x slower), so they sleep instead, unless the
    // user chose. libgomp reads the policy when it loads: this process starts itself again.
    if (*n > 1 && !std::getenv("OMP_WAIT_POLICY")) {
      ::setenv("OMP_WAIT_POLICY", "passive", 1);
      ::execv("/proc/self/exe", argv);
      throw std::runtime_error(std::string("cannot restart pcmoe: ") + std::strerror(errno));
    }
    return measure(config, *n, p);
  } catch (const MemoryUsageError& e) {
    std::fprintf(stderr, "pcmoe memory: %s\n%s", e.what(), kMemoryUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcmoe memory: error: %s\n", e.what());
    return 1;
  }
}
