// What DP-SGD's guarantee rests on: secret Poisson batches, noise whose float rounding cannot
// single out its input, a delta that means something, and seeded runs that say they are not
// private (docs/privacy.md, "Randomness" and "The budget").
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "privacy/accountant.h"
#include "privacy/dp_sgd.h"
#include "train/train_config.h"

using namespace pcmoe;

namespace {

// The Kolmogorov-Smirnov statistic of a sample against N(0, sd²).
double ks_normal(std::vector<double> x, double sd) {
  std::sort(x.begin(), x.end());
  const double n = (double)x.size();
  double d = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double f = 0.5 * std::erfc(-x[i] / (sd * std::sqrt(2.0)));
    d = std::max({d, f - i / n, (i + 1) / n - f});
  }
  return d;
}

std::string error_of(const PrivacyConfig& c, int n_units) {
  try {
    plan_dp(c, n_units, 10);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

PrivacyConfig config() {
  PrivacyConfig c;
  c.enabled = true;
  c.sampling_rate = 0.1;
  c.noise_multiplier = 1.0;
  return c;
}

}  // namespace

TEST(HardenedNoise, IsNormalWithTheRequestedDeviation) {
  NoiseSource src = NoiseSource::seeded(2024, 1);
  const int n = 200000;
  const double sd = 2.5;
  std::vector<double> x(n);
  double sum = 0, sq = 0;
  for (double& v : x) {
    v = sd * src.hardened_normal();
    sum += v;
    sq += v * v;
  }
  const double mean = sum / n, var = sq / n - mean * mean;
  EXPECT_LT(std::fabs(mean), 5 * sd / std::sqrt(n));
  EXPECT_LT(std::fabs(var / (sd * sd) - 1), 5 * std::sqrt(2.0 / n));
  // KS at the 0.1% level (critical value 1.95/sqrt(n)); the same test tells a 5% wider normal apart.
  const double critical = 1.95 / std::sqrt(n);
  EXPECT_LT(ks_normal(x, sd), critical);
  EXPECT_GT(ks_normal(x, 1.05 * sd), critical);
}

TEST(HardenedNoise, SecretKeysUseItSeededSourcesKeepOneDraw) {
  std::array<unsigned char, 32> secret{};
  secret[0] = 1;
  NoiseSource keyed = NoiseSource::keyed(secret, 5), keyed_twin = NoiseSource::keyed(secret, 5);
  NoiseSource seeded = NoiseSource::seeded(3, 4), seeded_twin = NoiseSource::seeded(3, 4);
  std::vector<float> a(1000, 0.25f), b(1000, 0.25f);
  keyed.add_gaussian(a.data(), a.size(), 0.7);
  seeded.add_gaussian(b.data(), b.size(), 0.7);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i], (float)(0.25 + 0.7 * keyed_twin.hardened_normal())) << i;
    ASSERT_EQ(b[i], (float)(0.25 + 0.7 * seeded_twin.normal())) << i;  // as before the hardening
  }
}

TEST(HardenedNoise, SecureSourcesDoNotRepeat) {
  std::vector<float> a(256, 0.0f), b(256, 0.0f);
  NoiseSource::secure().add_gaussian(a.data(), a.size(), 1.0);
  NoiseSource::secure().add_gaussian(b.data(), b.size(), 1.0);
  int equal = 0;
  for (size_t i = 0; i < a.size(); ++i) equal += a[i] == b[i];
  EXPECT_EQ(equal, 0);
}

TEST(SecurePoissonSampler, SecretPerRunRepeatableWithinItAtRateQ) {
  const PoissonSampler run1 = PoissonSampler::secure(), run2 = PoissonSampler::secure();
  EXPECT_FALSE(run1.is_seeded());
  const std::vector<int> b = run1.sample(3, 20000, 0.1);
  EXPECT_EQ(b, run1.sample(3, 20000, 0.1));  // every mode of a run redraws the step's batch
  EXPECT_NE(b, run1.sample(4, 20000, 0.1));
  EXPECT_NE(b, run2.sample(3, 20000, 0.1));  // another run of the same config: other batches
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
  EXPECT_EQ(run1.sample(0, 100, 1.0).size(), 100u);
  // Each unit's count over S steps is Binomial(S, q), independently: their chi-square statistic
  // over n units has mean n and standard deviation sqrt(2n).
  const int n = 1000, steps = 200;
  const double q = 0.1;
  std::vector<int> count(n, 0);
  for (int s = 0; s < steps; ++s)
    for (int u : run2.sample(s, n, q)) ++count[u];
  double total = 0, chi2 = 0;
  for (int c : count) {
    total += c;
    chi2 += (c - steps * q) * (c - steps * q) / (steps * q * (1 - q));
  }
  EXPECT_LT(std::fabs(total - n * steps * q), 5 * std::sqrt(n * steps * q * (1 - q)));
  EXPECT_LT(std::fabs(chi2 - n), 5 * std::sqrt(2.0 * n));
}

TEST(DeltaRule, DefaultIsATenthOfOneOverNWeakOnesRefusedUnlessAllowed) {
  PrivacyConfig c = config();
  const DpPlan p = plan_dp(c, 500, 10);
  EXPECT_EQ(p.delta, 1.0 / 5000);
  EXPECT_EQ(p.report(10)["delta"], 1.0 / 5000);
  EXPECT_EQ(p.report(10)["weak_delta"], false);
  c.delta = 1.0 / 500;  // exactly 1/N
  const std::string err = error_of(c, 500);
  EXPECT_NE(err.find("N = 500"), std::string::npos) << err;
  EXPECT_NE(err.find("privacy.allow_weak_delta: true"), std::string::npos) << err;
  c.delta = 0.3;
  EXPECT_NE(error_of(c, 500), "");
  c.delta = 0.999 / 500;
  EXPECT_EQ(plan_dp(c, 500, 10).delta, 0.999 / 500);
  c.delta = 0.3;
  c.allow_weak_delta = true;
  const DpPlan weak = plan_dp(c, 500, 10);
  EXPECT_EQ(weak.delta, 0.3);
  EXPECT_EQ(weak.report(10)["weak_delta"], true);
  EXPECT_THROW(privacy::require_strong_delta(1e-3, 1000, false, "x"), std::runtime_error);
  EXPECT_NO_THROW(privacy::require_strong_delta(9.99e-4, 1000, false, "x"));
}

TEST(TestSeed, OneKeySaysNotPrivateAndReplacesNoiseSeed) {
  const nlohmann::json base = {{"sampling_rate", 0.1}, {"noise_multiplier", 1.0}};
  EXPECT_EQ(privacy_config_from_json(base).test_seed, -1);
  nlohmann::json seeded = base;
  seeded["test_seed"] = 4;
  const PrivacyConfig c = privacy_config_from_json(seeded);
  EXPECT_EQ(c.test_seed, 4);
  EXPECT_EQ(privacy_config_from_json(to_json(c)).test_seed, 4);

  const nlohmann::json r = plan_dp(c, 100, 10).report(10)["randomness"];
  EXPECT_EQ(r["private"], false);
  EXPECT_EQ(r["test_seed"], 4);
  EXPECT_EQ(r["source"].get<std::string>().rfind("not private: seeded sampling and noise", 0), 0u);
  const nlohmann::json secure = plan_dp(privacy_config_from_json(base), 100, 10).report(10)["randomness"];
  EXPECT_EQ(secure["private"], true);
  EXPECT_EQ(secure["source"].get<std::string>().find("not private"), std::string::npos);
  EXPECT_FALSE(sampler_for(plan_dp(privacy_config_from_json(base), 100, 10), 1).is_seeded());
  EXPECT_TRUE(sampler_for(plan_dp(c, 100, 10), 1).is_seeded());

  nlohmann::json old = base;
  old["noise_seed"] = 3;
  try {
    privacy_config_from_json(old);
    ADD_FAILURE() << "privacy.noise_seed accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("privacy.test_seed"), std::string::npos) << e.what();
  }
  old["noise_seed"] = -1;  // what earlier checkpoints' configs carry: read back, secure
  EXPECT_EQ(privacy_config_from_json(old).test_seed, -1);
}
