// DP-SGD for the MoE model (docs/privacy.md): privacy units, Poisson sampling, per-unit clipping
// through the router and the experts (wherever they run), the noise and the budget.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"
#include "privacy/accountant.h"
#include "privacy/noise.h"
#include "privacy/privacy_config.h"
#include "privacy/sampling.h"

namespace pcmoe {

// A training stream cut into privacy units, each a run of adjacent windows of T+1 tokens.
// "sequence": every window is a unit (windows at k*T, as validation_windows). "document": the
// windows of one document (a BOS-led run of the stream), cut inside it; a document shorter than
// T+1 tokens gives no window.
struct PrivacyUnits {
  int seq_len = 0;
  std::vector<int32_t> windows;  // [n_windows, T+1]
  std::vector<int> first;        // unit u owns windows first[u] .. first[u+1]-1
  int n_units() const { return (int)first.size() - 1; }
  int n_windows() const { return first.back(); }
  int max_windows() const;
  const int32_t* window(int w) const { return windows.data() + (size_t)w * (seq_len + 1); }
};
PrivacyUnits make_privacy_units(const std::vector<int32_t>& tokens, int seq_len, const std::string& unit,
                                int32_t bos_id);

// The privacy parameters of a run, resolved before its first step.
struct DpPlan {
  double sigma = 0;   // noise multiplier
  double q = 0;       // sampling rate
  double delta = 0;
  double clip = 0;
  double epsilon_budget = 0;  // 0: none
  int64_t budget_steps = 0;   // the most steps the budget allows (train.steps when calibrated)
  int n_units = 0;
  bool sigma_calibrated = false;
  privacy::Conversion conversion = privacy::Conversion::kImproved;
  bool per_layer = false;
  bool aux_per_unit = true;
  std::string unit;
  bool seeded = false;  // privacy.test_seed: seeded batches and noise, not private
  uint64_t test_seed = 0;
  double epsilon_after(int64_t steps) const;  // by the configured conversion
  double epsilon_after(int64_t steps, privacy::Conversion conv) const;
  double expected_batch() const { return q * n_units; }
  double noise_std() const { return sigma * clip; }                  // of every gradient coordinate's noise
  float average_scale() const { return (float)(1.0 / expected_batch()); }  // the noisy sum / qN
  // The report's privacy block after `steps` steps.
  nlohmann::json report(int64_t steps) const;
  // Where the batches and the noise come from, for the log ("not private: ..." when seeded).
  std::string randomness() const;
};
// Calibrates σ (when not given) for `steps` steps; refuses (std::runtime_error, saying why) a
// plan whose budget cannot be met: σ out of reach, or a given σ that cannot pay for one step; and
// a δ >= 1/N unless privacy.allow_weak_delta.
DpPlan plan_dp(const PrivacyConfig& c, int n_units, int64_t steps);

// The batches of a plan: secure, or (seeded plans) drawn from `seed` — train.seed or a party's
// seed, so seeded runs draw the batches they drew before privacy.test_seed existed.
PoissonSampler sampler_for(const DpPlan& plan, uint64_t seed);

struct ClippedBatch {
  LossStats loss;              // mean over the sampled units' sequences (zero when none)
  int units = 0, windows = 0;
  double mean_norm = 0;        // mean per-unit gradient norm before clipping
  double clipped_fraction = 0; // share of units whose factor was below 1
};
// Adds Σ_u clip(g_u) over the sampled units to the gradients (the model's ParamSet and, through
// its ExpertBackend, the experts'), in micro-batches of at most model.max_batch() windows that
// never split a unit. Each unit's loss is the sum over its sequences of (mean CE of the
// sequence + the weighted aux losses of the sequence).
ClippedBatch accumulate_clipped(Model& model, const PrivacyUnits& units, const std::vector<int>& sampled,
                                const DpPlan& plan);

// The clip factors of the units of one micro-batch from their squared norms per clip group
// (unit_sq[g * n_units + u]): flat, min(1, C / (‖g_u‖ + 1e-6)) for every group (as Opacus);
// per-layer, each group against C / sqrt(groups).
std::vector<float> clip_factors(const std::vector<double>& unit_sq, int groups, int n_units, const DpPlan& plan,
                                double* norm_sum, int* clipped);

// The noise of a party's own tensors at step `step`: the secure source, or (seeded plans) a
// stream of (test_seed, stream) — stream names the tensors' owner and step. A secure source gets
// a fresh key from RAND_bytes at every call.
NoiseSource noise_for(const DpPlan& plan, uint64_t stream);

// What the optimizer gets: every gradient coordinate += N(0, σ²C²), then divided by qN.
void privatise_gradients(ParamSet& params, NoiseSource& noise, const DpPlan& plan);

}  // namespace pcmoe
