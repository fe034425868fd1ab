// RDP accountant of the Poisson-subsampled Gaussian mechanism; see accountant.h for the math.
#include "privacy/accountant.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>

namespace pcmoe::privacy {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLogHalf = -0.69314718055994530942;  // log(1/2)
// The fractional series stops once both new terms are below e^kLogStop (A_α ≥ 1, so this is a
// relative truncation of about 1e-13) and i > α.
constexpr double kLogStop = -30.0;
constexpr int64_t kMaxSeriesTerms = 20'000'000;
// Calibration gives up when even this σ (the first doubling past 2^20) misses the target.
constexpr double kMaxSigma = 1048576.0;  // 2^20
constexpr int kMaxBisections = 200;

std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

void check_q(double q) {
  if (!(q > 0.0 && q <= 1.0)) throw std::invalid_argument("sampling rate q must be in (0, 1], got " + num(q));
}
void check_sigma(double sigma) {
  if (!(sigma > 0.0) || !std::isfinite(sigma))
    throw std::invalid_argument("noise multiplier sigma must be a finite number > 0, got " + num(sigma));
}
void check_alpha(double alpha) {
  if (!(alpha > 1.0) || !std::isfinite(alpha))
    throw std::invalid_argument("RDP order alpha must be a finite number > 1, got " + num(alpha));
}
void check_delta(double delta) {
  if (!(delta > 0.0 && delta < 1.0)) throw std::invalid_argument("delta must be in (0, 1), got " + num(delta));
}
void check_steps(int64_t steps) {
  if (steps < 1) throw std::invalid_argument("steps must be at least 1, got " + std::to_string(steps));
}

}  // namespace

const char* conversion_name(Conversion conv) { return conv == Conversion::kClassic ? "classic" : "improved"; }

namespace detail {

double log_add(double log_x, double log_y) {
  const double a = std::min(log_x, log_y), b = std::max(log_x, log_y);
  if (a == -kInf) return b;
  return b + std::log1p(std::exp(a - b));
}

double log_sub(double log_x, double log_y) {
  if (log_x < log_y) throw std::runtime_error("log_sub: the result would be negative");
  if (log_y == -kInf) return log_x;
  if (log_x == log_y) return -kInf;
  const double d = log_x - log_y;
  // log(e^x − e^y) = x + log(1 − e^(y−x)); log1p(−e^−d) is accurate for large d, log(−expm1(−d))
  // for small d.
  return d > 0.6931471805599453 ? log_x + std::log1p(-std::exp(-d)) : log_x + std::log(-std::expm1(-d));
}

double log_erfc(double x) {
  // std::erfc is accurate to a few ulp while its result is a normal double (x < ~26); beyond
  // x = 20 use the asymptotic expansion
  //   erfc(x) = e^(−x²) / (x √π) · Σ_k (−1)^k (2k−1)!! / (2x²)^k,
  // whose terms at x ≥ 20 fall below 1e-17 within 8 terms.
  if (x < 20.0) return std::log(std::erfc(x));
  const double inv = 1.0 / (2.0 * x * x);
  double term = 1.0, sum = 1.0;
  for (int k = 1; k < 60; ++k) {
    term *= -(2.0 * k - 1.0) * inv;
    sum += term;
    if (std::fabs(term) < 1e-18) break;
  }
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log(sum);
}

double log_a_integer(double q, double sigma, int64_t alpha) {
  // A_α = Σ_{i=0..α} C(α,i) q^i (1−q)^(α−i) exp((i² − i)/(2σ²)).
  const double log_q = std::log(q), log_1mq = std::log1p(-q), two_s2 = 2.0 * sigma * sigma;
  const double lg_alpha = std::lgamma(double(alpha) + 1.0);
  double log_a = -kInf;
  for (int64_t i = 0; i <= alpha; ++i) {
    const double di = double(i);
    const double log_coef = lg_alpha - std::lgamma(di + 1.0) - std::lgamma(double(alpha - i) + 1.0);
    log_a = log_add(log_a, log_coef + di * log_q + double(alpha - i) * log_1mq + (di * di - di) / two_s2);
  }
  return log_a;
}

double log_a_fractional(double q, double sigma, double alpha) {
  // The two series of Mironov, Talwar, Zhang (2019), split at z0. C(α,i) is positive for i < α + 1
  // and alternates in sign beyond; positive and negative terms are summed apart (in log space)
  // and subtracted once at the end.
  const double log_q = std::log(q), log_1mq = std::log1p(-q);
  const double two_s2 = 2.0 * sigma * sigma, sqrt2_sigma = std::sqrt(2.0) * sigma;
  const double z0 = sigma * sigma * (log_1mq - log_q) + 0.5;  // σ² log(1/q − 1) + 1/2
  double pos = -kInf, neg = -kInf;
  double log_abs_coef = 0.0;  // log |C(α, i)|
  bool positive = true;       // sign of C(α, i)
  for (int64_t i = 0;; ++i) {
    if (i >= kMaxSeriesTerms)
      throw std::runtime_error("RDP series did not converge within " + std::to_string(kMaxSeriesTerms) +
                               " terms (q = " + num(q) + ", sigma = " + num(sigma) + ", alpha = " + num(alpha) + ")");
    const double di = double(i), j = alpha - di;
    const double log_t0 = log_abs_coef + di * log_q + j * log_1mq;
    const double log_t1 = log_abs_coef + j * log_q + di * log_1mq;
    const double log_e0 = kLogHalf + log_erfc((di - z0) / sqrt2_sigma);
    const double log_e1 = kLogHalf + log_erfc((z0 - j) / sqrt2_sigma);
    const double log_s0 = log_t0 + (di * di - di) / two_s2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / two_s2 + log_e1;
    double& acc = positive ? pos : neg;
    acc = log_add(acc, log_add(log_s0, log_s1));
    if (di > alpha && std::max(log_s0, log_s1) < kLogStop) break;
    // C(α, i+1) = C(α, i) (α − i)/(i + 1).
    log_abs_coef += std::log(std::fabs(alpha - di)) - std::log(di + 1.0);
    if (alpha - di < 0) positive = !positive;
  }
  if (!(pos > neg))
    throw std::runtime_error("RDP series lost all precision (q = " + num(q) + ", sigma = " + num(sigma) +
                             ", alpha = " + num(alpha) + ")");
  return log_sub(pos, neg);
}

}  // namespace detail

double rdp_subsampled_gaussian(double q, double sigma, double alpha) {
  check_q(q);
  check_sigma(sigma);
  check_alpha(alpha);
  if (q == 1.0) return alpha / (2.0 * sigma * sigma);
  if (alpha == std::floor(alpha) && alpha <= 1e6)
    return detail::log_a_integer(q, sigma, int64_t(alpha)) / (alpha - 1.0);
  return detail::log_a_fractional(q, sigma, alpha) / (alpha - 1.0);
}

std::vector<double> default_orders() {
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1.0 + x / 10.0);
  for (int a = 12; a < 64; ++a) orders.push_back(double(a));
  return orders;
}

EpsilonResult epsilon_from_rdp(const std::vector<double>& orders, const std::vector<double>& rdp, double delta,
                               Conversion conv) {
  check_delta(delta);
  if (orders.empty() || orders.size() != rdp.size())
    throw std::invalid_argument("epsilon_from_rdp: need as many RDP values as orders, and at least one");
  const double log_delta = std::log(delta);
  EpsilonResult best{kInf, std::numeric_limits<double>::quiet_NaN()};
  for (size_t k = 0; k < orders.size(); ++k) {
    const double a = orders[k];
    check_alpha(a);
    const double eps = conv == Conversion::kClassic
                           ? rdp[k] - log_delta / (a - 1.0)
                           : rdp[k] + std::log((a - 1.0) / a) - (log_delta + std::log(a)) / (a - 1.0);
    if (eps < best.epsilon) best = {eps, a};  // NaN never compares less; ties keep the first order
  }
  // (ε, δ)-DP with ε < 0 implies (0, δ)-DP.
  if (best.epsilon < 0) best.epsilon = 0;
  return best;
}

EpsilonResult epsilon_rdp(double q, double sigma, int64_t steps, double delta, Conversion conv,
                          const std::vector<double>& orders) {
  check_q(q);
  check_sigma(sigma);
  check_steps(steps);
  check_delta(delta);
  std::vector<double> rdp(orders.size());
  for (size_t k = 0; k < orders.size(); ++k) rdp[k] = double(steps) * rdp_subsampled_gaussian(q, sigma, orders[k]);
  return epsilon_from_rdp(orders, rdp, delta, conv);
}

double calibrate_sigma(double target_epsilon, double delta, double q, int64_t steps, Conversion conv,
                       double tolerance) {
  if (!(target_epsilon > 0.0) || !std::isfinite(target_epsilon))
    throw std::invalid_argument("target epsilon must be a finite number > 0, got " + num(target_epsilon));
  if (!(tolerance > 0.0)) throw std::invalid_argument("epsilon tolerance must be > 0, got " + num(tolerance));
  check_delta(delta);
  check_q(q);
  check_steps(steps);
  auto eps_at = [&](double sigma) { return epsilon_rdp(q, sigma, steps, delta, conv).epsilon; };
  double sigma_low = 0.0, sigma_high = 10.0, eps_high = kInf;
  while (eps_high > target_epsilon) {
    sigma_high *= 2.0;
    eps_high = eps_at(sigma_high);
    if (eps_high > target_epsilon && sigma_high > kMaxSigma)
      throw std::runtime_error("target epsilon " + num(target_epsilon) + " is out of reach at delta " + num(delta) +
                               ", q " + num(q) + ", " + std::to_string(steps) + " steps: even sigma " +
                               num(sigma_high) + " gives epsilon " + num(eps_high) + " (" + conversion_name(conv) +
                               " conversion)");
  }
  for (int it = 0; target_epsilon - eps_high > tolerance; ++it) {
    if (it >= kMaxBisections)
      throw std::runtime_error("sigma calibration did not reach epsilon within " + num(tolerance) + " of " +
                               num(target_epsilon) + " in " + std::to_string(kMaxBisections) + " bisections");
    const double sigma = 0.5 * (sigma_low + sigma_high);
    const double eps = eps_at(sigma);
    if (eps < target_epsilon) {
      sigma_high = sigma;
      eps_high = eps;
    } else {
      sigma_low = sigma;
    }
  }
  return sigma_high;
}

double default_delta(int64_t n_units) { return 1.0 / (10.0 * (double)n_units); }

void require_strong_delta(double delta, int64_t n_units, bool allow_weak, const std::string& override) {
  if (allow_weak || delta < 1.0 / (double)n_units) return;
  char msg[320];
  std::snprintf(msg, sizeof msg,
                "delta %.6g is at least 1/N = %.6g (N = %lld privacy units): a run that leaks one unit whole "
                "meets it; use delta <= 1/(10N) = %.6g (the default) or set %s",
                delta, 1.0 / (double)n_units, (long long)n_units, default_delta(n_units), override.c_str());
  throw std::runtime_error(msg);
}

}  // namespace pcmoe::privacy
