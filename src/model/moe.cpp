#include "model/moe.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "tensor/gemm.h"

namespace pcmoe {

void MoeSaved::plan(Arena& a, const MoeShape& s) {
  const size_t N = s.N, E = s.E, K = s.K;
  probs = a.take<float>(N * E);
  lse = a.take<float>(N);
  expert = a.take<int>(N * K);
  gate = a.take<float>(N * K);
  row = a.take<int>(N * K);
  offsets = a.take<int>(E + 1);
  y = a.take<float>(N * K * s.C);
}

void MoeScratch::plan(Arena& a, const MoeShape& s) {
  grouped_a = a.take<float>((size_t)s.N * s.K * s.C);
  grouped_b = a.take<float>((size_t)s.N * s.K * s.C);
  dlogits = a.take<float>((size_t)s.N * s.E);
}

namespace {
// How many of each aux group's (token, choice) pairs went to each expert.
std::vector<std::vector<int>> group_expert_counts(const MoeSaved& sv, const MoeShape& s) {
  if (s.aux_group < 1 || s.N % s.aux_group != 0) throw std::logic_error("aux group must divide the batch rows");
  std::vector<std::vector<int>> counts(s.N / s.aux_group, std::vector<int>(s.E, 0));
  for (int i = 0; i < s.N * s.K; ++i) counts[i / s.K / s.aux_group][sv.expert[i]]++;
  return counts;
}
}  // namespace

void moe_forward(float* out, MoeSaved& sv, MoeScratch& scratch, const float* x, const float* router,
                 ExpertBackend& experts, int layer, const MoeShape& s, const LoraMap* router_lora) {
  const int N = s.N, C = s.C, E = s.E, K = s.K;
  float* logits = scratch.dlogits;
  {
    const ComputeDtypeScope exact(Dtype::kF32);  // routing decisions stay fp32 in every compute dtype
    matmul_nt(logits, x, router, N, E, C, false);
    if (router_lora) lora_forward(logits, x, *router_lora, N);
  }

#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    const float* r = logits + (size_t)t * E;
    float* p = sv.probs + (size_t)t * E;
    float mx = -INFINITY;
    for (int e = 0; e < E; ++e) mx = std::max(mx, r[e]);
    float sum = 0;
    for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(r[e] - mx));
    for (int e = 0; e < E; ++e) p[e] /= sum;
    sv.lse[t] = mx + std::log(sum);
    // Top-k by repeated selection: strict '>' keeps the lower index on ties.
    int* chosen = sv.expert + (size_t)t * K;
    float* g = sv.gate + (size_t)t * K;
    float picked_sum = 0;
    for (int j = 0; j < K; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken |= chosen[i] == e;
        if (!taken && (best < 0 || p[e] > p[best])) best = e;
      }
      chosen[j] = best;
      g[j] = p[best];
      picked_sum += p[best];
    }
    if (s.renormalize)
      for (int j = 0; j < K; ++j) g[j] /= picked_sum;
  }

  // Group rows by expert, tokens in order within each expert.
  std::vector<int> fill(E, 0);
  for (int i = 0; i < N * K; ++i) fill[sv.expert[i]]++;
  sv.offsets[0] = 0;
  for (int e = 0; e < E; ++e) sv.offsets[e + 1] = sv.offsets[e] + fill[e];
  for (int e = 0; e < E; ++e) fill[e] = sv.offsets[e];
  for (int i = 0; i < N * K; ++i) sv.row[i] = fill[sv.expert[i]]++;

  float* xs = scratch.grouped_a;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N * K; ++i)
    std::memcpy(xs + (size_t)sv.row[i] * C, x + (size_t)(i / K) * C, C * sizeof(float));

  experts.forward(layer, sv.offsets, xs, sv.y);

#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    float* o = out + (size_t)t * C;
    std::memset(o, 0, C * sizeof(float));
    for (int j = 0; j < K; ++j) {
      const float g = sv.gate[(size_t)t * K + j];
      const float* y = sv.y + (size_t)sv.row[(size_t)t * K + j] * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] += g * y[c];
    }
  }

  // Auxiliary losses: L_aux = mean over groups of E * sum_e f_e * P_e, L_z = mean_t lse_t^2.
  const std::vector<std::vector<int>> counts = group_expert_counts(sv, s);
  const int groups = N / s.aux_group;
  double aux = 0, z = 0;
  for (int g = 0; g < groups; ++g) {
    double ga = 0;
    for (int e = 0; e < E; ++e) {
      double P = 0;
      for (int t = g * s.aux_group; t < (g + 1) * s.aux_group; ++t) P += sv.probs[(size_t)t * E + e];
      const double f = double(counts[g][e]) / ((double)s.aux_group * K);
      ga += f * (P / s.aux_group);
    }
    aux += ga;
  }
  for (int t = 0; t < N; ++t) z += (double)sv.lse[t] * sv.lse[t];
  sv.aux = static_cast<float>(E * aux / groups);
  sv.z = static_cast<float>(z / N);
}

void moe_backward(float* dx, float* drouter, const float* dout, MoeSaved& sv, MoeScratch& scratch,
                  const float* x, const float* router, ExpertBackend& experts, int layer,
                  const MoeShape& s, float aux_weight, float z_weight, const GradSink& sink,
                  float* dx_cache, const LoraMap* router_lora) {
  const int N = s.N, C = s.C, E = s.E, K = s.K;
  float* dy = scratch.grouped_a;
  float* dxs = scratch.grouped_b;
  float* dlogits = scratch.dlogits;
  // d(aux_weight * L_aux) / d p[t,e]: the same for every t of an aux group.
  const std::vector<std::vector<int>> counts = group_expert_counts(sv, s);
  const int groups = N / s.aux_group;
  std::vector<float> aux_coef((size_t)groups * E);
  for (int g = 0; g < groups; ++g)
    for (int e = 0; e < E; ++e)
      aux_coef[(size_t)g * E + e] =
          aux_weight * E * (float(counts[g][e]) / ((float)s.aux_group * K)) / s.aux_group / groups;

#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    const float* go = dout + (size_t)t * C;
    const float* g = sv.gate + (size_t)t * K;
    const int* chosen = sv.expert + (size_t)t * K;
    float dgate[64];  // K <= 64 is checked by the model
    float gdg = 0;
    for (int j = 0; j < K; ++j) {
      const int r = sv.row[(size_t)t * K + j];
      const float* y = sv.y + (size_t)r * C;
      float* dyr = dy + (size_t)r * C;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) {
        dot += go[c] * y[c];
        dyr[c] = g[j] * go[c];
      }
      dgate[j] = dot;
      gdg += dot * g[j];
    }
    const float* p = sv.probs + (size_t)t * E;
    float* dl = dlogits + (size_t)t * E;
    float dp[1024];  // E <= 1024 is checked by the model
    const float* ac = aux_coef.data() + (size_t)(t / s.aux_group) * E;
    for (int e = 0; e < E; ++e) dp[e] = ac[e];
    float picked_sum = 0;
    for (int j = 0; j < K; ++j) picked_sum += p[chosen[j]];
    for (int j = 0; j < K; ++j)
      dp[chosen[j]] += s.renormalize ? (dgate[j] - gdg) / picked_sum : dgate[j];
    float pdp = 0;
    for (int e = 0; e < E; ++e) pdp += p[e] * dp[e];
    const float zc = z_weight * 2.0f * sv.lse[t] / N;
    for (int e = 0; e < E; ++e) dl[e] = p[e] * (dp[e] - pdp) + zc * p[e];
  }

  switch (sink.mode()) {
    case SinkMode::kSum:
    case SinkMode::kFrozen: experts.backward(layer, sv.offsets, dy, dxs); break;
    case SinkMode::kUnitNorms: {
      std::vector<int> unit((size_t)N * K);
      for (int i = 0; i < N * K; ++i) unit[sv.row[i]] = sink.token_unit()[i / K];
      experts.backward_unit_norms(layer, sv.offsets, dy, unit.data(), sink.n_units(), dxs, sink.group_sq());
      std::memcpy(dx_cache, dxs, (size_t)N * K * C * sizeof(float));
      break;
    }
    case SinkMode::kClipped:
      experts.add_clipped_grads(layer, sink.group_factor());
      dxs = dx_cache;
      break;
  }

#pragma omp parallel for schedule(static)
  for (int t = 0; t < N; ++t) {
    float* d = dx + (size_t)t * C;
    std::memset(d, 0, C * sizeof(float));
    for (int j = 0; j < K; ++j) {
      const float* src = dxs + (size_t)sv.row[(size_t)t * K + j] * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) d[c] += src[c];
    }
  }
  const ComputeDtypeScope exact(Dtype::kF32);
  matmul_nn(dx, dlogits, router, N, C, E, true);
  sink.linear(drouter, dlogits, x, N, E, C);
  if (router_lora) lora_backward(dx, dlogits, x, *router_lora, N);
}

}  // namespace pcmoe
