#include "eval/audit_rows.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <stdexcept>
#include <tuple>

#include "collab/expert_host.h"
#include "collab/expert_wire.h"
#include "model/local_experts.h"
#include "model/model.h"
#include "train/checkpoint.h"

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

// The bit of the host's expert e in a routing code (routing_trace.h), or 0 when e is not its.
int host_bit(const std::vector<int>& hosted, int e) {
  const auto it = std::find(hosted.begin(), hosted.end(), e);
  return it == hosted.end() ? 0 : 1 << (it - hosted.begin());
}

}  // namespace

void unit_scale(float* v, int C) {
  double ss = 0;
  for (int c = 0; c < C; ++c) ss += (double)v[c] * v[c];
  const float s = ss > 0 ? (float)(std::sqrt((double)C / ss)) : 0.f;
  for (int c = 0; c < C; ++c) v[c] *= s;
}

std::vector<int> moe_layers(const ModelConfig& mc) {
  std::vector<int> out;
  for (int l = 0; l < mc.n_layers; ++l)
    if (mc.is_moe(l)) out.push_back(l);
  return out;
}

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

std::map<int, Rows> victim_rows(const RunConfig& cfg, const Recording& rec, int64_t round) {
  const ModelConfig& mc = cfg.model;
  const int C = mc.d_model;
  const std::vector<int> hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);
  const int max_rows = std::max(1, cfg.train.batch_size) * 64 * mc.seq_len * mc.top_k;
  const int T = mc.seq_len, B = cfg.train.batch_size;
  std::map<int, Rows> out;
  std::map<std::tuple<int, int, bool>, int> calls;  // (sender, layer, forward) -> its micro-batch
  ExpertRequest req;
  for (size_t k = 0; k < rec.records.size(); ++k) {
    const Record& r = rec.records[k];
    if (r.round != round || r.is_response || r.from == rec.observer) continue;
    const bool forward = r.kind == MsgKind::kExpertForward;
    if (!forward && r.kind != MsgKind::kExpertBackward && r.kind != MsgKind::kExpertBackwardUnits) continue;
    decode_expert_request(r.kind, r.payload, mc, hosted, max_rows, req, parse_wire_dtype(cfg.collab.wire_dtype));
    if ((int)r.truth.size() != 3 * req.n_rows())
      throw std::runtime_error("the recording's truth does not match its expert calls (corrupt recording)");
    Rows& rows = out[req.layer];
    const int micro = calls[{r.from, req.layer, forward}]++;
    for (int e : hosted)
      for (int i = req.offsets[e]; i < req.offsets[e + 1]; ++i) {
        const float* x = req.rows.data() + (size_t)i * C;
        const int n = r.truth[3 * i + 2];
        const Slot at{r.from, micro * B + n / T, n % T + (forward ? 0 : 1)};
        const int64_t group = (int64_t)k * mc.n_experts + e;
        if (forward) {
          rows.state.insert(rows.state.end(), x, x + C);
          rows.input.push_back(r.truth[3 * i]);
          rows.expert.push_back(e);
          rows.input_at.push_back(at);
          rows.input_group.push_back(group);
        } else {
          rows.grad.insert(rows.grad.end(), x, x + C);
          unit_scale(rows.grad.data() + rows.grad.size() - C, C);
          rows.target.push_back(r.truth[3 * i + 1]);
          rows.target_at.push_back(at);
          rows.target_group.push_back(group);
        }
      }
  }
  return out;
}

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

}  // namespace pcmoe::eval
