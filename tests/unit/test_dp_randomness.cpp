// What DP-SGD's guarantee rests on: noise whose float rounding cannot single out its input
// (docs/privacy.md, "Randomness").
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "privacy/noise.h"

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
