#include "eval/audit.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

#include "collab/expert_host.h"
#include "collab/expert_wire.h"
#include "collab/recorder.h"
#include "collab/runner.h"
#include "common/stopwatch.h"
#include "eval/loaded_model.h"
#include "eval/membership.h"
#include "eval/routing_trace.h"
#include "model/local_experts.h"
#include "model/model.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace pcmoe::eval {
namespace {

// Runs the experts here and keeps the grouped rows a host would have received: the attacker's
// own view of what crosses the boundary, on text whose tokens it knows.
class CapturingExperts final : public ExpertBackend {
 public:
  CapturingExperts(const ModelConfig& cfg, ParamSet& params, int max_rows)
      : inner_(cfg, params, max_rows), rows_(cfg.n_layers), grads_(cfg.n_layers), width_((size_t)cfg.d_model),
        E_(cfg.n_experts) {}
  void forward(int layer, const int* offsets, const float* x, float* y) override {
    rows_[layer].assign(x, x + offsets[E_] * width_);
    inner_.forward(layer, offsets, x, y);
  }
  void backward(int layer, const int* offsets, const float* dy, float* dx) override {
    grads_[layer].assign(dy, dy + offsets[E_] * width_);
    inner_.backward(layer, offsets, dy, dx);
  }
  void backward_unit_norms(int, const int*, const float*, const int*, int, float*, double*) override {
    throw std::logic_error("the audit's attacker model runs no per-unit backward");
  }
  void add_clipped_grads(int, const float*) override {
    throw std::logic_error("the audit's attacker model runs no per-unit backward");
  }
  const std::vector<float>& rows(int layer) const { return rows_[layer]; }
  const std::vector<float>& grads(int layer) const { return grads_[layer]; }

 private:
  LocalExperts inner_;
  std::vector<std::vector<float>> rows_, grads_;
  size_t width_;
  int E_;
};

// Rows of one MoE layer with what scores them: the hidden state, the gradient direction (unit
// norm, times sqrt(d): the gate's scale is not information about the token), the row's expert,
// its input token and its target.
struct Rows {
  std::vector<float> state, grad;
  std::vector<int32_t> input, target;
  std::vector<int> expert;
  int n() const { return (int)input.size(); }
};

void unit_scale(float* v, int C) {
  double ss = 0;
  for (int c = 0; c < C; ++c) ss += (double)v[c] * v[c];
  const float s = ss > 0 ? (float)(std::sqrt((double)C / ss)) : 0.f;
  for (int c = 0; c < C; ++c) v[c] *= s;
}

// The MoE layers of a model, in order.
std::vector<int> moe_layers(const ModelConfig& mc) {
  std::vector<int> out;
  for (int l = 0; l < mc.n_layers; ++l)
    if (mc.is_moe(l)) out.push_back(l);
  return out;
}

// The bit of the host's expert e in a routing code (routing_trace.h), or 0 when e is not its.
int host_bit(const std::vector<int>& hosted, int e) {
  const auto it = std::find(hosted.begin(), hosted.end(), e);
  return it == hosted.end() ? 0 : 1 << (it - hosted.begin());
}

// The attacker's view of round `round`: its model, and public text through it. Per MoE layer,
// one row per token (its first choice) and the (expert, token) counts of every choice; per batch,
// the trace its own host would have received of that text.
struct PublicView {
  std::vector<float> wte;                                // [V, C] the attacker's embedding
  std::map<int, Rows> rows;                              // per MoE layer
  std::map<int, std::vector<std::vector<int64_t>>> routed;  // per MoE layer: [expert][token] counts
  std::vector<Trace> traces;
};

PublicView public_view(const RunConfig& cfg, const std::string& view_dir, const std::vector<int32_t>& windows,
                       int n_windows, const std::vector<int>& hosted) {
  const ModelConfig& mc = cfg.model;
  const int T = mc.seq_len, C = mc.d_model, K = mc.top_k, B = std::min(16, n_windows);
  ParamSet params(mc, ParamSelection{});
  load_checkpoint(view_dir, mc, params, nullptr);
  CapturingExperts experts(mc, params, B * T * K);
  Model model(mc, params, experts, B);
  PublicView v;
  v.wte.assign(params.value("wte"), params.value("wte") + (size_t)mc.vocab_size * C);
  for (int l = 0; l < mc.n_layers; ++l)
    if (mc.is_moe(l)) v.routed[l].assign(mc.n_experts, std::vector<int64_t>(mc.vocab_size, 0));
  for (int start = 0; start + B <= n_windows; start += B) {
    model.forward(windows.data() + (size_t)start * (T + 1), B, 1.f);
    model.backward();
    params.zero_grads();
    const int N = model.last_rows();
    Trace& trace = v.traces.emplace_back();
    for (int l = 0; l < mc.n_layers; ++l) {
      if (!mc.is_moe(l)) continue;
      const MoeSaved& sv = model.moe_saved(l);
      Rows& r = v.rows[l];
      LayerRows& seen = trace.emplace_back();
      for (int n = 0; n < N; ++n) {
        const int g = sv.row[n * K];
        r.state.insert(r.state.end(), experts.rows(l).begin() + (size_t)g * C, experts.rows(l).begin() + (size_t)(g + 1) * C);
        r.grad.insert(r.grad.end(), experts.grads(l).begin() + (size_t)g * C, experts.grads(l).begin() + (size_t)(g + 1) * C);
        unit_scale(r.grad.data() + r.grad.size() - C, C);
        r.input.push_back(model.last_inputs()[n]);
        r.target.push_back(model.last_targets()[n]);
        r.expert.push_back(sv.expert[n * K]);
        int code = 0;
        for (int k = 0; k < K; ++k) {
          ++v.routed[l][sv.expert[n * K + k]][model.last_inputs()[n]];
          code |= host_bit(hosted, sv.expert[n * K + k]);
        }
        if (code == 0) continue;
        seen.state.insert(seen.state.end(), experts.rows(l).begin() + (size_t)g * C, experts.rows(l).begin() + (size_t)(g + 1) * C);
        seen.code.push_back(code);
        const int first = hosted[std::countr_zero((unsigned)code)];  // the group the row first arrives in
        for (int k = 0; k < K; ++k)
          if (sv.expert[n * K + k] == first)
            seen.place.push_back((sv.row[n * K + k] - sv.offsets[first] + 0.5f) /
                                 (float)(sv.offsets[first + 1] - sv.offsets[first]));
        seen.token.push_back(model.last_inputs()[n]);
        seen.position.push_back(n);
      }
    }
  }
  return v;
}

// What the observer received from the victims in one round, per MoE layer.
std::map<int, Rows> victim_rows(const RunConfig& cfg, const Recording& rec, int64_t round) {
  const ModelConfig& mc = cfg.model;
  const int C = mc.d_model;
  const std::vector<int> hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);
  const int max_rows = std::max(1, cfg.train.batch_size) * 64 * mc.seq_len * mc.top_k;
  std::map<int, Rows> out;
  ExpertRequest req;
  for (const Record& r : rec.records) {
    if (r.round != round || r.is_response || r.from == rec.observer) continue;
    const bool forward = r.kind == MsgKind::kExpertForward;
    if (!forward && r.kind != MsgKind::kExpertBackward && r.kind != MsgKind::kExpertBackwardUnits) continue;
    decode_expert_request(r.kind, r.payload, mc, hosted, max_rows, req, parse_wire_dtype(cfg.collab.wire_dtype));
    if ((int)r.truth.size() != 3 * req.n_rows())
      throw std::runtime_error("the recording's truth does not match its expert calls (corrupt recording)");
    Rows& rows = out[req.layer];
    for (int e : hosted)
      for (int i = req.offsets[e]; i < req.offsets[e + 1]; ++i) {
        const float* x = req.rows.data() + (size_t)i * C;
        if (forward) {
          rows.state.insert(rows.state.end(), x, x + C);
          rows.input.push_back(r.truth[3 * i]);
          rows.expert.push_back(e);
        } else {
          rows.grad.insert(rows.grad.end(), x, x + C);
          unit_scale(rows.grad.data() + rows.grad.size() - C, C);
          rows.target.push_back(r.truth[3 * i + 1]);
        }
      }
  }
  return out;
}

// The victims' forward calls of one round as traces: a sender's k-th call at each MoE layer
// belongs to its k-th trace (the order in which the host received them). A token routed to two
// of the host's experts arrives twice with the same state and is one row of the trace.
std::vector<Trace> victim_traces(const RunConfig& cfg, const Recording& rec, int64_t round) {
  const ModelConfig& mc = cfg.model;
  const size_t C = mc.d_model;
  const std::vector<int> layers = moe_layers(mc), hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);
  const int max_rows = std::max(1, cfg.train.batch_size) * 64 * mc.seq_len * mc.top_k;
  std::map<std::pair<int, int>, Trace> traces;  // (sender, k) -> trace
  std::map<std::pair<int, int>, int> calls;     // (sender, layer) -> calls so far
  ExpertRequest req;
  for (const Record& r : rec.records) {
    if (r.round != round || r.is_response || r.from == rec.observer || r.kind != MsgKind::kExpertForward) continue;
    decode_expert_request(r.kind, r.payload, mc, hosted, max_rows, req, parse_wire_dtype(cfg.collab.wire_dtype));
    const int m = (int)(std::find(layers.begin(), layers.end(), req.layer) - layers.begin());
    Trace& t = traces[{r.from, calls[{r.from, req.layer}]++}];
    t.resize(layers.size());
    LayerRows& out = t[m];
    std::map<std::string, int> row_of_state;
    for (int e : hosted)
      for (int i = req.offsets[e]; i < req.offsets[e + 1]; ++i) {
        const float* x = req.rows.data() + i * C;
        const auto [it, fresh] = row_of_state.emplace(std::string((const char*)x, C * sizeof(float)), out.n());
        if (!fresh) {
          out.code[it->second] |= host_bit(hosted, e);
          continue;
        }
        out.state.insert(out.state.end(), x, x + C);
        out.code.push_back(host_bit(hosted, e));
        out.place.push_back((i - req.offsets[e] + 0.5f) / (float)(req.offsets[e + 1] - req.offsets[e]));
        out.token.push_back(r.truth[3 * i]);
        out.position.push_back(r.truth[3 * i + 2]);
      }
  }
  std::vector<Trace> out;
  for (auto& [key, t] : traces) out.push_back(std::move(t));
  return out;
}

// Standardises columns of x[n, C] by the public data's mean and std (the attacker's statistics).
struct Standardiser {
  std::vector<float> mean, inv_std;
  Standardiser(const std::vector<float>& x, int C) : mean(C, 0.f), inv_std(C, 0.f) {
    const size_t n = x.size() / C;
    std::vector<double> s(C, 0), ss(C, 0);
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) s[c] += x[i * C + c], ss[c] += (double)x[i * C + c] * x[i * C + c];
    for (int c = 0; c < C; ++c) {
      const double m = s[c] / n, var = std::max(ss[c] / n - m * m, 1e-12);
      mean[c] = (float)m;
      inv_std[c] = (float)(1 / std::sqrt(var));
    }
  }
  std::vector<float> apply(const std::vector<float>& x) const {
    std::vector<float> y(x);
    const size_t C = mean.size();
    for (size_t i = 0; i < y.size(); ++i) y[i] = (y[i] - mean[i % C]) * inv_std[i % C];
    return y;
  }
};

// Cosine of each row of x[n, C] with each token embedding, times `sign`.
std::vector<float> embedding_scores(const std::vector<float>& x, const std::vector<float>& wte, int C, float sign) {
  const int n = (int)(x.size() / C), V = (int)(wte.size() / C);
  std::vector<float> xn(x), en(wte), out((size_t)n * V);
  for (int i = 0; i < n; ++i) unit_scale(xn.data() + (size_t)i * C, C);
  for (int v = 0; v < V; ++v) unit_scale(en.data() + (size_t)v * C, C);
  matmul_nt(out.data(), xn.data(), en.data(), n, V, C, false);
  for (float& s : out) s *= sign;
  return out;
}

std::vector<float> probe_scores(const std::vector<float>& train_x, const std::vector<int32_t>& train_y,
                                const std::vector<float>& test_x, int C, int V, const ProbeConfig& pc, float* loss) {
  Probe probe(C, V, pc);
  *loss = probe.train(train_x.data(), train_y.data(), (int)train_y.size());
  std::vector<float> out(test_x.size() / C * V);
  probe.logits(test_x.data(), (int)(test_x.size() / C), out.data());
  return out;
}

nlohmann::json cell(const char* attack, const char* signal, int layer, int64_t round, const TopK& hit, const TopK& chance) {
  return {{"attack", attack}, {"signal", signal},     {"layer", layer},
          {"round", round},   {"top1", hit.top1},     {"top10", hit.top10},
          {"chance_top1", chance.top1}, {"chance_top10", chance.top10}, {"rows", hit.n}};
}

// The routing-trace attack (routing_trace.h): link thresholds and P(token | expert tuple) from
// the attacker's own traces of public text; the victims' traces linked and decoded with them.
// Adds the decoding's cells to `cells` and the linking's scores to `links`.
void routing_trace_cells(const std::vector<Trace>& pub, const std::vector<Trace>& vic, const std::vector<int>& layers,
                         int64_t round, int C, int V, nlohmann::json& cells, nlohmann::json& links) {
  const int L = (int)layers.size();
  RouteTable::Linking link{std::vector<float>(L, 1.f), std::vector<float>(L, 2.f)};
  auto candidates = [&](const std::vector<Trace>& traces, int m) {
    LinkCandidates all;
    for (const Trace& t : traces) {
      const LinkCandidates c = nearest_previous(t[m - 1], t[m], C, link.bands[m]);
      all.best.insert(all.best.end(), c.best.begin(), c.best.end());
      all.truth.insert(all.truth.end(), c.truth.begin(), c.truth.end());
      all.cosine.insert(all.cosine.end(), c.cosine.begin(), c.cosine.end());
    }
    return all;
  };
  for (int m = 1; m < L; ++m) {
    link.bands[m] = fit_place_band(pub, m);
    link.thresholds[m] = fit_link_threshold(candidates(pub, m));
    const LinkScore s = score_links(candidates(vic, m), link.thresholds[m]);
    links.push_back({{"layer", layers[m]}, {"from_layer", layers[m - 1]}, {"round", round},
                     {"band", link.bands[m]}, {"threshold", link.thresholds[m]}, {"accuracy", s.accuracy},
                     {"baseline", s.baseline}, {"precision", s.precision}, {"recall", s.recall}, {"rows", s.rows}});
  }
  RouteTable table(L, V);
  for (const Trace& t : pub) table.add(t, link, C);
  for (int m = 0; m < L; ++m) {
    std::vector<float> scores;
    std::vector<int32_t> labels;
    for (const Trace& t : vic) {
      const std::vector<float> s = table.scores(t, link, C, m);
      scores.insert(scores.end(), s.begin(), s.end());
      labels.insert(labels.end(), t[m].token.begin(), t[m].token.end());
    }
    if (labels.empty()) continue;
    cells.push_back(cell("routing-trace", "expert ids across layers", layers[m], round,
                         topk_hits(scores.data(), labels.data(), (int)labels.size(), V), chance_level(labels, V)));
  }
}

// The released models of `run` that victim v's data went into, as the run saved them.
std::vector<std::pair<std::string, fs::path>> released_models(const fs::path& run, int v, int observer) {
  std::vector<std::pair<std::string, fs::path>> out = {
      {"pc-moe, the victim's model", run / ("party" + std::to_string(v)) / "checkpoint"},
      {"pc-moe, the observer's model", run / ("party" + std::to_string(observer)) / "checkpoint"},
      {"centralised", run / "centralised" / "checkpoint"},
      {"local-only, the victim's model", run / "local-only" / ("party" + std::to_string(v)) / "checkpoint"}};
  for (const char* mode : {"fedavg", "int8", "topk-ef", "cg-fedllm", "fedavg-lora"})
    out.push_back({mode, run / mode / "checkpoint"});
  // Not saved: a deployment keeps no party's whole model.
  std::erase_if(out, [](const auto& m) { return !fs::exists(m.second / "model.safetensors"); });
  return out;
}

// Membership inference against the released models of the runs (those they saved): each
// victim's training windows (the batches of its turns under the run's schedule) against its
// validation windows (the same genres, never trained on), calibrated by the observer's
// local-only model of the same run when it has one (it never saw the victim's data) and
// otherwise by the shared starting model.
nlohmann::json membership_cells(const std::vector<fs::path>& runs, int observer, int n_parties,
                                const fs::path& start_view) {
  nlohmann::json cells = nlohmann::json::array();
  for (const fs::path& run : runs) {
    std::vector<std::vector<std::pair<std::string, fs::path>>> models(n_parties);
    fs::path any;
    for (int v = 0; v < n_parties; ++v)
      if (v != observer && !(models[v] = released_models(run, v, observer)).empty()) any = models[v][0].second;
    if (any.empty()) continue;
    const RunConfig cfg = read_checkpoint_config(any.string());
    const int T = cfg.model.seq_len, n_each = 256;
    const CollabData data = load_collab_data(cfg);
    const fs::path own_local = run / "local-only" / ("party" + std::to_string(observer)) / "checkpoint";
    const bool local_reference = fs::exists(own_local);
    LoadedModel reference(local_reference ? own_local.string() : start_view.string(), 16);
    for (int v = 0; v < n_parties; ++v) {
      if (models[v].empty()) continue;
      std::vector<int32_t> members((size_t)n_each * (T + 1));
      const int per_turn = cfg.train.grad_accum * cfg.train.batch_size;
      std::vector<int32_t> turn((size_t)per_turn * (T + 1));
      int have = 0;
      for (int64_t step = 0; have < n_each && step < cfg.train.steps; ++step) {
        fill_turn(cfg, data.parties[v], step, turn.data());
        const int take = std::min(per_turn, n_each - have);
        std::copy_n(turn.begin(), (size_t)take * (T + 1), members.begin() + (size_t)have * (T + 1));
        have += take;
      }
      const int n_non = std::min(n_each, data.parties[v].n_val);
      if (have < 4 || n_non < 4) continue;  // too few windows for an AUC to mean anything
      for (const auto& [name, dir] : models[v]) {
        LoadedModel target(dir.string(), 16);
        const MembershipResult r = membership_inference(target.model, reference.model, members.data(), have,
                                                        data.parties[v].val_windows.data(), n_non);
        cells.push_back({{"run", run.string()}, {"victim", v}, {"model", name}, {"auc_loss", r.auc_loss},
                         {"auc_calibrated", r.auc_calibrated}, {"members", r.n_members},
                         {"nonmembers", r.n_nonmembers}, {"trained_steps", cfg.train.steps},
                         {"reference", local_reference ? "the observer's local-only model" : "the shared start"}});
      }
    }
  }
  return cells;
}

}  // namespace

nlohmann::json run_audit(const std::string& run_dir, const std::string& out_dir, const AuditOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path rec_dir = fs::path(run_dir) / "audit";
  if (!fs::exists(rec_dir / "recording.bin"))
    throw std::runtime_error("'" + run_dir + "' has no recording (audit/recording.bin): train it with an \"audit\" "
                             "section in the config (docs/audit.md)");
  const Recording rec = read_recording(rec_dir.string());
  std::vector<int64_t> rounds;
  for (const auto& entry : fs::directory_iterator(rec_dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("view_r", 0) == 0) rounds.push_back(std::stoll(name.substr(6)));
  }
  std::sort(rounds.begin(), rounds.end());
  if (rounds.empty()) throw std::runtime_error("'" + rec_dir.string() + "' holds no observer views (view_r<round>)");
  const fs::path first_view = rec_dir / ("view_r" + std::to_string(rounds[0]));
  const RunConfig cfg = read_checkpoint_config(first_view.string());
  if (run_fingerprint(read_config_json((first_view / "config.json").string())) != rec.fingerprint)
    throw std::runtime_error("the recording in '" + rec_dir.string() + "' was made by another config than the run's");
  const ModelConfig& mc = cfg.model;
  const int C = mc.d_model, V = mc.vocab_size, T = mc.seq_len;
  const std::vector<int> hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);

  // Public text: the observer's own training documents (genres no victim holds).
  std::fprintf(stderr, "audit: loading the observer's public text\n");
  const CollabData data = load_collab_data(cfg, rec.observer);
  const std::vector<int32_t>& stream = data.parties[rec.observer].train.tokens;
  const int n_windows = std::min<int>(opt.public_windows, (int)((stream.size() - 1) / T));
  if (n_windows < 16) throw std::runtime_error("the observer holds too little text to train the attacks");
  std::vector<int32_t> windows;
  for (int w = 0; w < n_windows; ++w)
    windows.insert(windows.end(), stream.begin() + (size_t)w * T, stream.begin() + (size_t)w * T + T + 1);

  nlohmann::json cells = nlohmann::json::array(), links = nlohmann::json::array();
  for (size_t ri = 0; ri < rounds.size(); ++ri) {
    const int64_t round = rounds[ri];
    const bool mlp = opt.mlp_every_round || ri + 1 == rounds.size();
    const PublicView pub =
        public_view(cfg, (rec_dir / ("view_r" + std::to_string(round))).string(), windows, n_windows, hosted);
    const std::map<int, Rows> vic = victim_rows(cfg, rec, round);
    routing_trace_cells(pub.traces, victim_traces(cfg, rec, round), moe_layers(mc), round, C, V, cells, links);
    for (const auto& [layer, v] : vic) {
      const Rows& p = pub.rows.at(layer);
      // Hidden states -> input token.
      if (!v.input.empty()) {
        const TopK chance = chance_level(v.input, V);
        auto score = [&](const char* attack, const std::vector<float>& s) {
          cells.push_back(cell(attack, "states", layer, round, topk_hits(s.data(), v.input.data(), v.n(), V), chance));
        };
        score("nearest-embedding", embedding_scores(v.state, pub.wte, C, 1.f));
        const Standardiser st(p.state, C);
        const std::vector<float> ptrain = st.apply(p.state), vtest = st.apply(v.state);
        float loss = 0;
        score("linear-probe", probe_scores(ptrain, p.input, vtest, C, V, opt.linear, &loss));
        if (mlp) score("mlp", probe_scores(ptrain, p.input, vtest, C, V, opt.mlp, &loss));
        // The expert ids alone: P(token | this host's expert) from public text through the attacker's model.
        std::vector<float> s((size_t)v.n() * V);
        for (int i = 0; i < v.n(); ++i) {
          const std::vector<int64_t>& counts = pub.routed.at(layer)[v.expert[i]];
          for (int t = 0; t < V; ++t) s[(size_t)i * V + t] = (float)counts[t];
        }
        cells.push_back(cell("routing", "expert ids", layer, round, topk_hits(s.data(), v.input.data(), v.n(), V), chance));
      }
      // Output gradients -> target token.
      if (!v.target.empty()) {
        const TopK chance = chance_level(v.target, V);
        auto score = [&](const char* attack, const std::vector<float>& s) {
          cells.push_back(cell(attack, "gradients", layer, round, topk_hits(s.data(), v.target.data(), (int)v.target.size(), V), chance));
        };
        score("nearest-embedding", embedding_scores(v.grad, pub.wte, C, -1.f));
        float loss = 0;
        score("linear-probe", probe_scores(p.grad, p.target, v.grad, C, V, opt.linear, &loss));
        if (mlp) score("mlp", probe_scores(p.grad, p.target, v.grad, C, V, opt.mlp, &loss));
      }
    }
    std::fprintf(stderr, "audit: round %lld done (%zu/%zu), %.0fs\n", (long long)round, ri + 1, rounds.size(),
                 seconds_since(t0));
  }
  std::fprintf(stderr, "audit: membership inference against the released models\n");
  std::vector<fs::path> runs = {run_dir};
  runs.insert(runs.end(), opt.fed_runs.begin(), opt.fed_runs.end());
  const nlohmann::json membership =
      membership_cells(runs, rec.observer, rec.n_parties, rec_dir / ("view_r" + std::to_string(rounds[0])));
  // The federated server's attack runs where the server decodes (collab's fed modes); gather it.
  nlohmann::json bag_of_words = nlohmann::json::object();
  for (const fs::path& run : runs) {
    const fs::path report_path = run / "report.json";
    if (!fs::exists(report_path)) continue;
    nlohmann::json report = nlohmann::json::parse(std::ifstream(report_path));
    for (const auto& [mode, r] : report["modes"].items())  // none in a deployment's report
      if (r.contains("audit_bag_of_words")) bag_of_words[mode] = r["audit_bag_of_words"];
  }
  nlohmann::json out = {{"run", run_dir},   {"observer", rec.observer},   {"rounds", rounds},
                        {"public_windows", n_windows}, {"cells", cells}, {"links", links}, {"membership", membership},
                        {"bag_of_words", bag_of_words}};
  out["seconds"] = seconds_since(t0);
  fs::create_directories(out_dir);
  std::ofstream(fs::path(out_dir) / "audit.json") << out.dump(2) << "\n";
  return out;
}

}  // namespace pcmoe::eval
