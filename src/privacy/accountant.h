// The privacy accountant of DP-SGD: Rényi differential privacy (RDP) of the Poisson-subsampled
// Gaussian mechanism, converted to (ε, δ)-DP, and the noise calibration that inverts it.
//
// What is computed. One DP-SGD step samples each example independently with probability q (Poisson
// sampling), clips per-example gradients to norm C and adds N(0, σ²C²) noise to their sum. With
// sensitivity normalised to 1, its RDP at order α > 1 is (Mironov, Talwar, Zhang 2019, "Rényi
// Differential Privacy of the Sampled Gaussian Mechanism")
//     R(α) = log A_α / (α − 1),   A_α = E_{z∼μ0} [(μ(z)/μ0(z))^α],
//     μ0 = N(0, σ²),  μ = (1 − q) N(0, σ²) + q N(1, σ²),
// evaluated exactly: q = 1 gives α/(2σ²); an integer α the finite binomial sum
//     A_α = Σ_{i=0..α} C(α,i) q^i (1−q)^(α−i) exp((i² − i)/(2σ²));
// a fractional α the two series of the paper, split at z0 = σ² log(1/q − 1) + 1/2,
//     A_α = Σ_i C(α,i) q^i (1−q)^(α−i) e^((i²−i)/(2σ²)) ½erfc((i − z0)/(√2σ))
//         + Σ_i C(α,i) q^(α−i) (1−q)^i e^(((α−i)²−(α−i))/(2σ²)) ½erfc((z0 − (α−i))/(√2σ)),
// summed until both terms fall below e^-30 (after i > α; Opacus's criterion: an absolute truncation
// of about 1e-13 in A_α ≥ 1, so relative errors up to ~1e-7 where R(α) is as small as 1e-5, and far
// less elsewhere; e^-40 would cost ~10x the terms). Everything is in log space (log-add,
// log-sub, a log-erfc that stays accurate where erfc underflows), so large α and small σ neither
// overflow nor underflow. RDP composes additively: T steps give T · R(α).
//
// Conversions to (ε, δ), minimised over a grid of orders (default: Opacus's, 1.1, 1.2, ..., 10.9,
// 12, 13, ..., 63):
//   kClassic  (Mironov 2017, Prop. 3):      ε = min_α  R_T(α) + log(1/δ)/(α − 1)
//   kImproved (Balle et al. 2020, Thm. 21;   ε = min_α  R_T(α) + log((α−1)/α) − (log δ + log α)/(α − 1)
//              Opacus's get_privacy_spent):
// The improved bound is always the smaller. Both return the ε and the order that attains it (the
// first on ties; an ε below 0, possible only for δ near 1, is returned as 0); an optimum at the
// first or last order of the grid means a wider grid could give a smaller ε.
//
// Calibration (as Opacus's get_noise_multiplier): the σ for a target ε at (δ, q, T): σ_low = 0,
// σ_high = 10; double σ_high until ε(σ_high) ≤ target (so the first σ tried is 20); then bisect
// until target − 0.01 ≤ ε(σ_high) ≤ target, and return σ_high: a σ that meets the target, never
// one that misses it.
//
// Conventions: q is the per-example sampling rate in (0, 1]; σ the noise multiplier (noise std /
// clipping norm) > 0; δ in (0, 1); natural logarithms throughout. Invalid arguments throw
// std::invalid_argument with the offending name and value; numerical failure (a series that does
// not converge, an unreachable calibration target) throws std::runtime_error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pcmoe::privacy {

enum class Conversion { kClassic, kImproved };

// "classic" / "improved".
const char* conversion_name(Conversion conv);

// Per-step RDP R(α) of the Poisson-subsampled Gaussian mechanism; q in (0,1], σ > 0, α > 1.
double rdp_subsampled_gaussian(double q, double sigma, double alpha);

// The default order grid: 1 + x/10 for x = 1..99, then 12..63 (151 orders).
std::vector<double> default_orders();

struct EpsilonResult {
  double epsilon;     // the smallest ε over the orders
  double best_order;  // the order that attains it
};

// ε of `steps` compositions of one step at (q, σ), given δ. Orders must be > 1.
EpsilonResult epsilon_rdp(double q, double sigma, int64_t steps, double delta, Conversion conv,
                          const std::vector<double>& orders = default_orders());

// ε of an RDP curve already composed over all steps (rdp[k] at orders[k]).
EpsilonResult epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                               Conversion conv);

// The noise multiplier for a target ε (see the top of this file). Throws std::runtime_error when
// no σ up to 2^20 reaches the target.
double calibrate_sigma(double target_epsilon, double delta, double q, int64_t steps, Conversion conv,
                       double tolerance = 0.01);

// δ for N privacy units. The default is 1/(10N). A δ >= 1/N is met by a mechanism that publishes
// one unit whole at random, so it is refused (std::runtime_error naming `override`, the setting
// that accepts it) unless allow_weak.
double default_delta(int64_t n_units);
void require_strong_delta(double delta, int64_t n_units, bool allow_weak, const std::string& override);

// Building blocks, exposed for the tests.
namespace detail {
double log_add(double log_x, double log_y);  // log(e^x + e^y)
double log_sub(double log_x, double log_y);  // log(e^x − e^y), x ≥ y; −inf when equal
double log_erfc(double x);                   // log(erfc(x)), accurate for large x where erfc underflows
double log_a_integer(double q, double sigma, int64_t alpha);  // log A_α, integer α ≥ 2, 0 < q < 1
double log_a_fractional(double q, double sigma, double alpha);  // log A_α by the two series, 0 < q < 1
}  // namespace detail

}  // namespace pcmoe::privacy
