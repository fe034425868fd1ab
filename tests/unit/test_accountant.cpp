// Tests of src/privacy/accountant: RDP of the subsampled Gaussian mechanism, its conversion to
// (ε, δ) and the noise calibration, against Opacus's published numbers and against independent
// computations (numerical integration of the Rényi divergence, closed forms at q = 1, the exact
// privacy curve of the Gaussian mechanism).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "privacy/accountant.h"

namespace pcmoe::privacy {
namespace {

double rel_err(double got, double want) { return std::fabs(got - want) / std::fabs(want); }

// log A_α = log ∫ μ0(z) (μ(z)/μ0(z))^α dz with μ0 = N(0,σ²), μ = (1−q)N(0,σ²) + qN(1,σ²), by the
// trapezoid rule in long double over [−40σ, α + 40σ] with step σ/200 (the integrand is analytic
// and decays like a Gaussian, so the rule converges far below 1e-15). Written from the definition,
// sharing nothing with the accountant's series.
long double log_a_by_integration(double q_in, double sigma_in, double alpha_in) {
  const long double q = q_in, s = sigma_in, alpha = alpha_in;
  const long double lo = -40 * s, hi = alpha + 40 * s, h = s / 200;
  const long n = (long)std::ceil((hi - lo) / h);
  const long double step = (hi - lo) / n;
  const long double log_norm = -0.5L * std::log(2 * 3.14159265358979323846264338327950288L * s * s);
  std::vector<long double> f(n + 1);
  long double peak = -std::numeric_limits<long double>::infinity();
  for (long k = 0; k <= n; ++k) {
    const long double z = lo + k * step;
    const long double u = (2 * z - 1) / (2 * s * s);  // log of N(1,σ²)/N(0,σ²) at z
    // log(1 − q + q e^u), accurate on both sides of u = 0.
    const long double log_ratio = u > 0 ? u + std::log(q + (1 - q) * std::exp(-u)) : std::log1p(q * std::expm1(u));
    f[k] = log_norm - z * z / (2 * s * s) + alpha * log_ratio;
    peak = std::max(peak, f[k]);
  }
  long double sum = 0;
  for (long k = 0; k <= n; ++k) sum += (k == 0 || k == n ? 0.5L : 1.0L) * std::exp(f[k] - peak);
  return peak + std::log(sum * step);
}

TEST(AccountantTest, PublishedOpacusEpsilon) {
  const auto improved = epsilon_rdp(0.04, 1.5, 2250, 1e-5, Conversion::kImproved);
  const auto classic = epsilon_rdp(0.04, 1.5, 2250, 1e-5, Conversion::kClassic);
  std::printf("sigma 1.5, q 0.04, 2250 steps, delta 1e-5: improved eps %.12f (order %g), classic eps %.12f (order %g)\n",
              improved.epsilon, improved.best_order, classic.epsilon, classic.best_order);
  EXPECT_LT(rel_err(improved.epsilon, 7.3291111714), 1e-6);
  EXPECT_DOUBLE_EQ(improved.best_order, 3.9);
  EXPECT_LT(rel_err(classic.epsilon, 8.0738482772), 1e-6);
  EXPECT_DOUBLE_EQ(classic.best_order, 4.1);
}

TEST(AccountantTest, PublishedOpacusCalibration) {
  const double sigma = calibrate_sigma(8.0, 1e-5, 0.04, 2250, Conversion::kImproved);
  std::printf("eps 8, delta 1e-5, q 0.04, 2250 steps: sigma %.12f\n", sigma);
  EXPECT_LT(rel_err(sigma, 1.416015625), 1e-6);
  const double eps = epsilon_rdp(0.04, sigma, 2250, 1e-5, Conversion::kImproved).epsilon;
  EXPECT_LE(eps, 8.0);
  EXPECT_GE(eps, 8.0 - 0.01);
}

TEST(AccountantTest, CalibrationMeetsTargetWithinTolerance) {
  struct Case { double eps, delta, q; int64_t steps; };
  for (const Case& c : {Case{1.0, 1e-5, 0.01, 10000}, Case{3.0, 1e-6, 0.1, 500}, Case{0.5, 1e-5, 1.0, 1},
                        Case{50.0, 1e-5, 0.5, 100}}) {
    for (Conversion conv : {Conversion::kImproved, Conversion::kClassic}) {
      const double sigma = calibrate_sigma(c.eps, c.delta, c.q, c.steps, conv);
      const double eps = epsilon_rdp(c.q, sigma, c.steps, c.delta, conv).epsilon;
      EXPECT_LE(eps, c.eps) << conversion_name(conv) << " sigma " << sigma;
      EXPECT_GE(eps, c.eps - 0.01) << conversion_name(conv) << " sigma " << sigma;
    }
    // The improved conversion is tighter, so it needs no more noise than the classic one.
    EXPECT_LE(calibrate_sigma(c.eps, c.delta, c.q, c.steps, Conversion::kImproved),
              calibrate_sigma(c.eps, c.delta, c.q, c.steps, Conversion::kClassic));
  }
}

TEST(AccountantTest, CalibrationOutOfReachThrows) {
  // With orders up to 63 no σ gives ε below about (log(1/δ) − log 63)/62 + log(62/63) ≈ 0.103 at δ = 1e-5.
  EXPECT_THROW(calibrate_sigma(0.05, 1e-5, 0.01, 100, Conversion::kImproved), std::runtime_error);
  EXPECT_THROW(calibrate_sigma(0.15, 1e-5, 0.01, 100, Conversion::kClassic), std::runtime_error);
}

TEST(AccountantTest, DefaultOrders) {
  const auto orders = default_orders();
  ASSERT_EQ(orders.size(), 151u);
  EXPECT_DOUBLE_EQ(orders.front(), 1.1);
  EXPECT_DOUBLE_EQ(orders[98], 10.9);
  EXPECT_EQ(orders[99], 12.0);
  EXPECT_EQ(orders.back(), 63.0);
  EXPECT_EQ(orders[9], 2.0);  // 1 + 10/10.0 is exactly 2: the integer formula applies
  EXPECT_TRUE(std::is_sorted(orders.begin(), orders.end()));
}

TEST(AccountantTest, FullBatchIsGaussianMechanism) {
  for (double sigma : {0.5, 1.0, 3.7})
    for (double alpha : {1.1, 2.0, 2.5, 7.3, 63.0}) EXPECT_EQ(rdp_subsampled_gaussian(1.0, sigma, alpha), alpha / (2 * sigma * sigma));

  // Classic conversion of R_T(α) = cα, c = T/(2σ²): minimised over α > 1 at α* = 1 + sqrt(L/c),
  // L = log(1/δ), with ε* = c + 2 sqrt(cL). Choose σ so that α* = 5 (a grid order): c = L/16.
  const double delta = 1e-5, L = std::log(1 / delta);
  const int64_t steps = 4;
  const double sigma = std::sqrt(steps * 8.0 / L);  // T/(2σ²) = L/16
  const auto classic = epsilon_rdp(1.0, sigma, steps, delta, Conversion::kClassic);
  EXPECT_NEAR(classic.epsilon, 9.0 * L / 16.0, 1e-12 * L);
  EXPECT_EQ(classic.best_order, 5.0);

  // Improved conversion: no closed form; compare with a fine scan of the same bound over α in
  // [1.1, 63]. The grid's minimum cannot beat the continuous one and stays within its grid gap.
  for (double s : {0.8, 2.0, 5.0}) {
    const int64_t T = 10;
    const double c = T / (2 * s * s);
    auto bound = [&](double a) { return c * a + std::log((a - 1) / a) - (std::log(delta) + std::log(a)) / (a - 1); };
    double best = std::numeric_limits<double>::infinity();
    for (int k = 0; k <= 619000; ++k) best = std::min(best, bound(1.1 + k * 1e-4));
    const auto improved = epsilon_rdp(1.0, s, T, delta, Conversion::kImproved);
    EXPECT_GE(improved.epsilon, best - 1e-12);
    EXPECT_LE(improved.epsilon, best * 1.01);
    EXPECT_NEAR(improved.epsilon, bound(improved.best_order), 1e-12 * improved.epsilon);
    EXPECT_LT(improved.epsilon, epsilon_rdp(1.0, s, T, delta, Conversion::kClassic).epsilon);
  }
}

// The exact privacy curve of T compositions of the Gaussian mechanism (sensitivity 1, noise σ):
// a Gaussian mechanism with μ = sqrt(T)/σ, δ(ε) = Φ(μ/2 − ε/μ) − e^ε Φ(−μ/2 − ε/μ) (Balle & Wang
// 2018). The RDP conversions must give an ε with δ(ε) ≤ δ (a valid bound) that is not far above
// the exact ε.
TEST(AccountantTest, FullBatchBoundsExactGaussianCurve) {
  auto phi = [](double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); };
  const double delta = 1e-5;
  for (double sigma : {1.0, 4.0, 20.0}) {
    const int64_t steps = 100;
    const double mu = std::sqrt(double(steps)) / sigma;
    auto exact_delta = [&](double eps) { return phi(mu / 2 - eps / mu) - std::exp(eps) * phi(-mu / 2 - eps / mu); };
    double lo = 0, hi = 1000;  // exact ε: δ(ε) is decreasing
    for (int it = 0; it < 200; ++it) (exact_delta(0.5 * (lo + hi)) > delta ? lo : hi) = 0.5 * (lo + hi);
    const double exact = hi;
    for (Conversion conv : {Conversion::kImproved, Conversion::kClassic}) {
      const double eps = epsilon_rdp(1.0, sigma, steps, delta, conv).epsilon;
      std::printf("Gaussian mechanism mu %.3f: exact eps %.6f, RDP (%s) %.6f\n", mu, exact, conversion_name(conv), eps);
      EXPECT_LE(exact_delta(eps), delta * (1 + 1e-9));
      EXPECT_LT(eps, exact * 1.6);
    }
  }
}

TEST(AccountantTest, RdpMatchesNumericalIntegration) {
  double worst = 0;
  char worst_case[96] = "";
  int cases = 0;
  for (double q : {0.001, 0.04, 0.2, 0.5, 0.9})
    for (double sigma : {0.6, 1.0, 1.5, 4.0})
      for (double alpha : {1.1, 1.5, 2.5, 3.9, 7.3, 10.9, 20.5, 2.0, 3.0, 8.0, 32.0, 63.0}) {
        const double rdp = rdp_subsampled_gaussian(q, sigma, alpha);
        const double want = double(log_a_by_integration(q, sigma, alpha) / (alpha - 1));
        const double err = rel_err(rdp, want);
        if (err > worst) std::snprintf(worst_case, sizeof worst_case, "q %g sigma %g alpha %g (RDP %.3g)", q, sigma, alpha, rdp);
        worst = std::max(worst, err);
        ++cases;
        EXPECT_LT(err, 1e-6) << "q " << q << " sigma " << sigma << " alpha " << alpha << ": series " << rdp
                             << ", integral " << want;
      }
  std::printf("RDP vs numerical integration: %d cases, worst relative error %.3g at %s\n", cases, worst, worst_case);
}

TEST(AccountantTest, FractionalSeriesMatchesIntegerSumAtIntegerOrders) {
  // The two-series formula holds for every real α > 1; at integer α it must agree with the
  // binomial sum.
  for (double q : {0.01, 0.3, 0.8})
    for (double sigma : {0.7, 2.0})
      for (int alpha : {2, 3, 5, 12, 40}) {
        const double a = detail::log_a_integer(q, sigma, alpha);
        const double b = detail::log_a_fractional(q, sigma, alpha);
        EXPECT_LT(std::fabs(a - b), 1e-10 * std::max(1.0, std::fabs(a))) << q << " " << sigma << " " << alpha;
      }
}

TEST(AccountantTest, RdpContinuousAcrossIntegerOrders) {
  // Orders just off an integer use the fractional series, the integer itself the binomial sum.
  for (double q : {0.04, 0.5})
    for (double alpha : {2.0, 4.0, 17.0}) {
      const double at = rdp_subsampled_gaussian(q, 1.2, alpha);
      EXPECT_LT(rel_err(rdp_subsampled_gaussian(q, 1.2, alpha + 1e-9), at), 1e-6);
      EXPECT_LT(rel_err(rdp_subsampled_gaussian(q, 1.2, alpha - 1e-9), at), 1e-6);
    }
}

TEST(AccountantTest, LogHelpers) {
  using detail::log_add;
  using detail::log_erfc;
  using detail::log_sub;
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_NEAR(log_add(std::log(2.0), std::log(3.0)), std::log(5.0), 1e-15);
  EXPECT_EQ(log_add(-inf, 1.5), 1.5);
  EXPECT_EQ(log_add(-inf, -inf), -inf);
  EXPECT_NEAR(log_add(1000.0, 1000.0), 1000.0 + std::log(2.0), 1e-12);
  EXPECT_NEAR(log_sub(std::log(5.0), std::log(3.0)), std::log(2.0), 1e-15);
  const double y = 1.0 - 1e-10, d = 1.0 - y;  // d is exact
  EXPECT_NEAR(log_sub(1.0, y), 1.0 + std::log(-std::expm1(-d)), 1e-12);
  EXPECT_NEAR(log_sub(0.0, -40.0), std::log1p(-std::exp(-40.0)), 1e-16);
  EXPECT_EQ(log_sub(2.0, 2.0), -inf);
  EXPECT_EQ(log_sub(2.0, -inf), 2.0);
  EXPECT_THROW(log_sub(1.0, 2.0), std::runtime_error);
  // log erfc against long double erfc, which stays representable up to x ≈ 106.
  for (double x : {-30.0, -3.0, -0.5, 0.0, 0.7, 5.0, 15.0, 19.999, 20.0, 20.001, 25.0, 26.5, 30.0, 60.0, 100.0}) {
    const long double want = std::log(std::erfc((long double)x));
    EXPECT_LT(std::fabs(log_erfc(x) - (double)want), 1e-13 * std::max(1.0, std::fabs((double)want))) << "x = " << x;
  }
  EXPECT_TRUE(std::isfinite(log_erfc(1e6)));
  EXPECT_LT(rel_err(log_erfc(1e6), -1e12), 1e-10);
}

TEST(AccountantTest, EpsilonIsMonotone) {
  for (Conversion conv : {Conversion::kImproved, Conversion::kClassic}) {
    double prev = std::numeric_limits<double>::infinity();
    for (double sigma : {0.5, 0.7, 0.9, 1.1, 1.5, 2.0, 3.0, 5.0, 10.0}) {
      const double eps = epsilon_rdp(0.02, sigma, 1000, 1e-5, conv).epsilon;
      EXPECT_LT(eps, prev) << "sigma " << sigma;
      prev = eps;
    }
    prev = 0;
    for (int64_t steps : {1, 10, 100, 1000, 10000, 100000}) {
      const double eps = epsilon_rdp(0.02, 1.0, steps, 1e-5, conv).epsilon;
      EXPECT_GT(eps, prev) << "steps " << steps;
      prev = eps;
    }
    prev = 0;
    for (double q : {0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0}) {
      const double eps = epsilon_rdp(q, 1.0, 100, 1e-5, conv).epsilon;
      EXPECT_GT(eps, prev) << "q " << q;
      prev = eps;
    }
    // And per order: RDP grows with α (Rényi divergences are non-decreasing in the order).
    double prev_rdp = 0;
    for (double alpha : default_orders()) {
      const double r = rdp_subsampled_gaussian(0.04, 1.5, alpha);
      EXPECT_GE(r, prev_rdp * (1 - 1e-12)) << "alpha " << alpha;
      prev_rdp = r;
    }
  }
  // Improved is always below classic: log((α−1)/α) − log(α)/(α−1) < 0.
  for (double sigma : {0.6, 1.5, 8.0})
    EXPECT_LT(epsilon_rdp(0.04, sigma, 2250, 1e-5, Conversion::kImproved).epsilon,
              epsilon_rdp(0.04, sigma, 2250, 1e-5, Conversion::kClassic).epsilon);
}

TEST(AccountantTest, ComposesLinearlyInSteps) {
  const auto orders = default_orders();
  std::vector<double> rdp;
  for (double a : orders) rdp.push_back(37 * rdp_subsampled_gaussian(0.1, 1.3, a));
  const auto via_rdp = epsilon_from_rdp(orders, rdp, 1e-6, Conversion::kImproved);
  const auto direct = epsilon_rdp(0.1, 1.3, 37, 1e-6, Conversion::kImproved);
  EXPECT_EQ(via_rdp.epsilon, direct.epsilon);
  EXPECT_EQ(via_rdp.best_order, direct.best_order);
  // A custom grid: a single order gives that order's bound.
  const auto single = epsilon_rdp(0.1, 1.3, 37, 1e-6, Conversion::kClassic, {8.0});
  EXPECT_EQ(single.best_order, 8.0);
  EXPECT_NEAR(single.epsilon, 37 * rdp_subsampled_gaussian(0.1, 1.3, 8.0) + std::log(1e6) / 7.0, 1e-12);
}

TEST(AccountantTest, RejectsInvalidArguments) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (double q : {0.0, -0.1, 1.5, nan}) EXPECT_THROW(rdp_subsampled_gaussian(q, 1.0, 2.0), std::invalid_argument);
  for (double sigma : {0.0, -1.0, nan, std::numeric_limits<double>::infinity()})
    EXPECT_THROW(rdp_subsampled_gaussian(0.1, sigma, 2.0), std::invalid_argument);
  for (double alpha : {1.0, 0.5, nan}) EXPECT_THROW(rdp_subsampled_gaussian(0.1, 1.0, alpha), std::invalid_argument);
  for (double delta : {0.0, 1.0, -1e-5, 2.0, nan})
    EXPECT_THROW(epsilon_rdp(0.1, 1.0, 10, delta, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(epsilon_rdp(0.1, 1.0, 0, 1e-5, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(epsilon_rdp(0.1, 1.0, -5, 1e-5, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(epsilon_rdp(0.1, 1.0, 10, 1e-5, Conversion::kImproved, {}), std::invalid_argument);
  EXPECT_THROW(epsilon_rdp(0.1, 1.0, 10, 1e-5, Conversion::kImproved, {2.0, 0.9}), std::invalid_argument);
  for (double eps : {0.0, -1.0, nan})
    EXPECT_THROW(calibrate_sigma(eps, 1e-5, 0.1, 10, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(calibrate_sigma(1.0, 1e-5, 0.1, 0, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(calibrate_sigma(1.0, 1.0, 0.1, 10, Conversion::kImproved), std::invalid_argument);
  EXPECT_THROW(calibrate_sigma(1.0, 1e-5, 0.0, 10, Conversion::kImproved), std::invalid_argument);
  try {
    rdp_subsampled_gaussian(1.5, 1.0, 2.0);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q must be in (0, 1]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace pcmoe::privacy
