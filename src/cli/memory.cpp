// `pcmoe memory`: the real peak memory of ONE party of an n-party PC-MoE, measured in its own
// process. The party (backbone, model, AdamW, expert host) is built as in PcMoeSession, but the
// other parties are answered by a stateless stub, so the process holds party p's memory alone.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "collab/expert_host.h"
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

// Party p's transport. Calls to p itself reach p's own host; every other host is answered as a
// host would answer (zero expert outputs and gradients, zero gradient sums, empty acks) from
// the request alone, with no weights behind it. Records the largest payload that crosses a
// boundary, for the transport term of the party's memory.
class PeerStubTransport final : public Transport {
 public:
  PeerStubTransport(const ModelConfig& cfg, int party, int n_parties) : cfg_(cfg), party_(party) {
    for (int h = 0; h < n_parties; ++h) {
      host_tensors_.push_back(param_layout(cfg, shard_selection(h, n_parties)).size());
      host_experts_.push_back(hosted_experts(cfg.n_experts, h, n_parties).size());
    }
  }

  void serve(int party, Handler handler) override {
    if (party != party_) throw std::logic_error("the stub transport serves only party " + std::to_string(party_));
    own_ = std::move(handler);
  }

  Bytes call(int from, int to, MsgKind kind, const Bytes& request) override {
    if (to == party_) return own_(kind, from, request);  // not a boundary: no copy, no count
    if (to < 0 || to >= (int)host_tensors_.size()) throw std::runtime_error("no party " + std::to_string(to));
    Bytes response = kind == MsgKind::kControl ? control(to, request) : expert(to, request);
    stats_.add(kind, from, to, request.size());
    stats_.add(kind, to, from, response.size());
    largest_ = std::max({largest_, request.size(), response.size()});
    return response;
  }

  size_t largest_payload() const { return largest_; }

 private:
  Bytes expert(int to, const Bytes& request) {
    Reader r(request);
    r.u32();  // layer
    const uint32_t k = r.u32();
    if (k != host_experts_[to]) throw std::runtime_error("expert call names the wrong number of experts");
    size_t rows = 0;
    for (uint32_t i = 0; i < k; ++i) rows += r.u32();
    const size_t floats = rows * cfg_.d_model;
    if (request.size() != 8 + 4 * (size_t)k + floats * sizeof(float))
      throw std::runtime_error("expert call payload does not match its row counts");
    return Bytes(floats * sizeof(float));  // zero-filled: the outputs or input gradients
  }

  Bytes control(int to, const Bytes& request) {
    Reader r(request);
    switch (static_cast<ControlOp>(r.u32())) {
      case ControlOp::kBeginTurn:
      case ControlOp::kApplyUpdate: return {};
      case ControlOp::kGradSqSums: return Bytes(host_tensors_[to] * sizeof(double));  // f64 zeros
      case ControlOp::kClipFactors:
      case ControlOp::kApplyNoisyUpdate: break;  // DP-SGD turns: `memory` runs plain turns
    }
    throw std::runtime_error("unexpected control operation");
  }

  ModelConfig cfg_;
  int party_;
  Handler own_;
  std::vector<size_t> host_tensors_;  // per host: how many tensors its shard holds
  std::vector<size_t> host_experts_;  // per host: experts per MoE layer
  size_t largest_ = 0;
};

int measure(const std::string& config_path, int n, int p) {
  const RunConfig cfg = load_run_config(config_path);
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  if (n > mc.n_experts)
    throw MemoryUsageError("--parties must be at most n_experts (" + std::to_string(mc.n_experts) + ")");
  set_num_threads(tc.threads);

  PeerStubTransport transport(mc, p, n);
  CollabParty party(mc, tc, transport, p, n);
  transport.serve(p, [&party](MsgKind kind, int from, const Bytes& req) { return party.host.handle(kind, from, req); });

  const size_t row = mc.seq_len + 1;
  std::vector<int32_t> windows((size_t)tc.grad_accum * tc.batch_size * row);
  Rng rng(tc.seed);
  const TurnPlan plan(mc, n);
  // Two of p's turns, so that AdamW's state has been written. The stub plays no other party's
  // turns, so p's host starts at each of p's own.
  for (int64_t k = 0, turn = -1; k < 2; ++k) {
    turn = next_turn_of(tc.seed, n, p, turn + 1, INT64_MAX);
    for (int32_t& id : windows) id = (int32_t)(rng.next_u64() % (uint64_t)mc.vocab_size);
    party.host.start_at((uint64_t)turn);
    run_turn(party, transport, tc, plan, turn, windows.data());
  }

  const size_t total = layout_numel(param_layout(mc, ParamSelection{}));
  const size_t experts = total - layout_numel(param_layout(mc, backbone_selection()));
  const nlohmann::json out = {{"parties", n},
                              {"party", p},
                              {"arena_bytes", party_memory(party, 2 * transport.largest_payload())},
                              {"peak_rss_bytes", peak_rss_bytes()},
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
    return measure(config, *n, p);
  } catch (const MemoryUsageError& e) {
    std::fprintf(stderr, "pcmoe memory: %s\n%s", e.what(), kMemoryUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcmoe memory: error: %s\n", e.what());
    return 1;
  }
}
