#include "privacy/dp_sgd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>


namespace pcmoe {

int PrivacyUnits::max_windows() const {
  int m = 0;
  for (int u = 0; u < n_units(); ++u) m = std::max(m, first[u + 1] - first[u]);
  return m;
}

PrivacyUnits make_privacy_units(const std::vector<int32_t>& tokens, int seq_len, const std::string& unit,
                                int32_t bos_id) {
  PrivacyUnits pu;
  pu.seq_len = seq_len;
  pu.first.push_back(0);
  const size_t T = seq_len, len = tokens.size();
  int n_windows = 0;
  auto cut = [&](size_t begin, size_t end) {  // windows at begin + k*T lying inside [begin, end)
    for (size_t s = begin; s + T < end; s += T) {
      pu.windows.insert(pu.windows.end(), tokens.begin() + s, tokens.begin() + s + T + 1);
      ++n_windows;
    }
  };
  if (unit == "sequence") {
    cut(0, len);
    for (int w = 1; w <= n_windows; ++w) pu.first.push_back(w);
  } else if (unit == "document") {
    std::vector<size_t> starts;
    for (size_t i = 0; i < len; ++i)
      if (tokens[i] == bos_id) starts.push_back(i);
    if (starts.empty()) throw std::runtime_error("privacy unit 'document' needs documents marked by BOS tokens");
    starts.push_back(len);
    for (size_t d = 0; d + 1 < starts.size(); ++d) {
      const int before = n_windows;
      cut(starts[d], starts[d + 1]);
      if (n_windows > before) pu.first.push_back(n_windows);
    }
  } else {
    throw std::runtime_error("unknown privacy unit '" + unit + "'");
  }
  if (pu.n_units() < 1) throw std::runtime_error("the training data has no privacy unit of seq_len+1 tokens");
  return pu;
}

double DpPlan::epsilon_after(int64_t steps) const { return epsilon_after(steps, conversion); }

double DpPlan::epsilon_after(int64_t steps, privacy::Conversion conv) const {
  if (steps <= 0) return 0;
  return privacy::epsilon_rdp(q, sigma, steps, delta, conv).epsilon;
}

nlohmann::json DpPlan::report(int64_t steps) const {
  nlohmann::json random = {{"private", !seeded}, {"source", randomness()}};
  if (seeded) random["test_seed"] = test_seed;
  return {{"unit", unit},
          {"units", n_units},
          {"sampling_rate", q},
          {"expected_batch_units", expected_batch()},
          {"noise_multiplier", sigma},
          {"noise_multiplier_calibrated", sigma_calibrated},
          {"clip", clip},
          {"clipping", per_layer ? "per-layer" : "flat"},
          {"steps", steps},
          {"delta", delta},
          {"weak_delta", delta * n_units >= 1},  // accepted only with privacy.allow_weak_delta
          {"epsilon", {{"rdp_improved", epsilon_after(steps, privacy::Conversion::kImproved)},
                       {"rdp_classic", epsilon_after(steps, privacy::Conversion::kClassic)}}},
          {"conversion", privacy::conversion_name(conversion)},
          {"epsilon_budget", epsilon_budget},
          {"aux_loss", aux_per_unit ? "per-unit (per sequence)" : "off"},
          {"randomness", random}};
}

std::string DpPlan::randomness() const {
  return seeded ? "not private: seeded sampling and noise (privacy.test_seed; whoever holds the config "
                  "recomputes every batch and every noise draw)"
                : "OpenSSL: batches and noise from AES-256-CTR keyed by RAND_bytes, each noise coordinate "
                  "the sum of four normals / 2 in double";
}

DpPlan plan_dp(const PrivacyConfig& c, int n_units, int64_t steps) {
  if (n_units < 1) throw std::runtime_error("DP-SGD needs at least one privacy unit");
  DpPlan p;
  p.q = c.sampling_rate;
  p.delta = c.delta > 0 ? c.delta : privacy::default_delta(n_units);
  privacy::require_strong_delta(p.delta, n_units, c.allow_weak_delta, "privacy.allow_weak_delta: true");
  p.clip = c.clip;
  p.epsilon_budget = c.epsilon;
  p.n_units = n_units;
  p.conversion = c.conversion == "classic" ? privacy::Conversion::kClassic : privacy::Conversion::kImproved;
  p.per_layer = c.clipping == "per-layer";
  p.aux_per_unit = c.aux_loss == "per-unit";
  p.unit = c.unit;
  p.seeded = c.test_seed >= 0;
  p.test_seed = p.seeded ? (uint64_t)c.test_seed : 0;
  p.budget_steps = steps;
  if (c.noise_multiplier > 0) {
    p.sigma = c.noise_multiplier;
    if (c.epsilon > 0) {
      if (p.epsilon_after(1) > c.epsilon)
        throw std::runtime_error("privacy budget cannot be met: one step at noise_multiplier " +
                                 std::to_string(p.sigma) + " already spends epsilon " +
                                 std::to_string(p.epsilon_after(1)) + " > " + std::to_string(c.epsilon));
      int64_t lo = 1, hi = steps;  // the most steps whose epsilon stays within the budget
      while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (p.epsilon_after(mid) <= c.epsilon) lo = mid;
        else hi = mid - 1;
      }
      p.budget_steps = lo;
    }
  } else {
    try {
      p.sigma = privacy::calibrate_sigma(c.epsilon, p.delta, p.q, steps, p.conversion);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("privacy budget cannot be met: ") + e.what());
    }
    p.sigma_calibrated = true;
  }
  return p;
}

PoissonSampler sampler_for(const DpPlan& plan, uint64_t seed) {
  return plan.seeded ? PoissonSampler::seeded(seed) : PoissonSampler::secure();
}

std::vector<float> clip_factors(const std::vector<double>& unit_sq, int groups, int n_units, const DpPlan& plan,
                                double* norm_sum, int* clipped) {
  std::vector<float> f((size_t)groups * n_units);
  const double group_clip = plan.per_layer ? plan.clip / std::sqrt((double)groups) : plan.clip;
  for (int u = 0; u < n_units; ++u) {
    double total = 0;
    for (int g = 0; g < groups; ++g) total += unit_sq[(size_t)g * n_units + u];
    *norm_sum += std::sqrt(total);
    bool any = false;
    for (int g = 0; g < groups; ++g) {
      const double norm = plan.per_layer ? std::sqrt(unit_sq[(size_t)g * n_units + u]) : std::sqrt(total);
      const double factor = std::min(1.0, group_clip / (norm + 1e-6));
      f[(size_t)g * n_units + u] = (float)factor;
      any |= factor < 1.0;
    }
    *clipped += any;
  }
  return f;
}

ClippedBatch accumulate_clipped(Model& model, const PrivacyUnits& units, const std::vector<int>& sampled,
                                const DpPlan& plan) {
  const int row = units.seq_len + 1, cap = model.max_batch(), G = model.clip_groups();
  std::vector<int32_t> batch((size_t)cap * row);
  std::vector<int> unit_of_seq(cap);
  ClippedBatch out;
  double norm_sum = 0, ce = 0, aux = 0, z = 0, total = 0;
  int clipped = 0;
  for (size_t i = 0; i < sampled.size();) {
    int b = 0, nu = 0;
    for (; i < sampled.size(); ++i) {
      const int u = sampled[i], w0 = units.first[u], nw = units.first[u + 1] - w0;
      if (nw > cap) throw std::logic_error("a privacy unit has more windows than the model's micro-batch");
      if (b + nw > cap) break;
      std::memcpy(batch.data() + (size_t)b * row, units.window(w0), (size_t)nw * row * sizeof(int32_t));
      for (int w = 0; w < nw; ++w) unit_of_seq[b + w] = nu;
      b += nw;
      ++nu;
    }
    // grad_scale = b: each sequence's loss is its own mean CE (plus its aux terms).
    const LossStats ls = model.forward(batch.data(), b, (float)b);
    std::vector<double> sq((size_t)G * nu, 0.0);
    model.backward_unit_norms(unit_of_seq.data(), nu, sq.data());
    const std::vector<float> f = clip_factors(sq, G, nu, plan, &norm_sum, &clipped);
    model.backward_clipped(unit_of_seq.data(), nu, f.data());
    ce += (double)ls.ce * b;
    aux += (double)ls.aux * b;
    z += (double)ls.z * b;
    total += (double)ls.total * b;
    out.windows += b;
    out.units += nu;
  }
  if (out.windows > 0) {
    out.loss.ce = (float)(ce / out.windows);
    out.loss.aux = (float)(aux / out.windows);
    out.loss.z = (float)(z / out.windows);
    out.loss.total = (float)(total / out.windows);
  }
  if (out.units > 0) {
    out.mean_norm = norm_sum / out.units;
    out.clipped_fraction = (double)clipped / out.units;
  }
  return out;
}

NoiseSource noise_for(const DpPlan& plan, uint64_t stream) {
  return plan.seeded ? NoiseSource::seeded(plan.test_seed, stream) : NoiseSource::secure();
}

void privatise_gradients(ParamSet& params, NoiseSource& noise, const DpPlan& plan) {
  add_gaussian_noise(params, noise, plan.noise_std());
  scale_grads(params, plan.average_scale());
}

}  // namespace pcmoe
