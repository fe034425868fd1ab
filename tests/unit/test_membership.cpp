// Membership inference (src/eval/membership.h): the exact AUC against a brute-force pair count,
// per-window losses against the model's own cross-entropy, and both attacks on a model made to
// memorise its training windows (AUC near 1) and on windows it never saw (AUC near 1/2).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include "eval/loaded_model.h"
#include "eval/membership.h"
#include "tensor/rng.h"
#include "train/checkpoint.h"
#include "train/local_model.h"
#include "train/step.h"
#include "tiny.h"

namespace fs = std::filesystem;
using namespace pcmoe;

namespace {

ModelConfig tiny_model() {
  return tiny::model();
}

TrainConfig tiny_train(int batch, int steps) {
  TrainConfig t = tiny::train();
  t.batch_size = batch;
  t.steps = steps;
  t.lr = 2e-2f;
  t.min_lr = 2e-3f;
  t.warmup = 5;
  t.weight_decay = 0;
  return t;
}

constexpr int kSymbols = 60;  // tokens are uniform over 2..61: no model beats ln 60 on a fresh window

// n windows of seq_len+1 tokens, each token uniform over kSymbols ids. Rng(s) and Rng(s + 1)
// run through the same stream one draw apart, so the seed is scrambled first: sets drawn with
// different seeds share no windows.
std::vector<int32_t> random_windows(int n, int seq_len, uint64_t seed) {
  Rng rng(splitmix64(seed));
  std::vector<int32_t> w((size_t)n * (seq_len + 1));
  for (int32_t& t : w) t = 2 + (int32_t)(rng.next_u64() % kSymbols);
  return w;
}

// Full-batch AdamW on `windows` (t.batch_size of them) for t.steps steps: memorisation.
void train_on(LocalModel& lm, const TrainConfig& t, const std::vector<int32_t>& windows) {
  for (int64_t step = 0; step < t.steps; ++step) {
    accumulate_gradients(lm.model, lm.params, windows.data(), t.batch_size, 1);
    apply_update(lm.params, lm.opt, t, step);
  }
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }

// Standard deviation of the AUC of n_m against n_n exchangeable continuous scores (the
// Mann-Whitney null): sqrt((n_m + n_n + 1) / (12 n_m n_n)).
double null_auc_sd(int n_m, int n_n) { return std::sqrt((n_m + n_n + 1.0) / (12.0 * n_m * n_n)); }

}  // namespace

TEST(RocAuc, MatchesTheBruteForcePairCountWithTies) {
  for (uint64_t seed : {1, 2, 3}) {
    Rng rng(seed);
    const int n_m = 50 + (int)(rng.next_u64() % 150), n_n = 50 + (int)(rng.next_u64() % 150);
    // Scores on a coarse grid of 12 values: most pairs that are not wins are ties.
    std::vector<double> m(n_m), n(n_n);
    for (double& s : m) s = 0.25 * (double)(rng.next_u64() % 12) + 0.5;  // shifted up: AUC away from 1/2
    for (double& s : n) s = 0.25 * (double)(rng.next_u64() % 12);
    double pairs = 0;
    for (double a : m)
      for (double b : n) pairs += a > b ? 1.0 : a == b ? 0.5 : 0.0;
    EXPECT_DOUBLE_EQ(roc_auc(m, n), pairs / ((double)n_m * n_n)) << "seed " << seed;
  }
}

TEST(RocAuc, KnownValues) {
  EXPECT_EQ(roc_auc({3, 4, 5}, {0, 1, 2}), 1.0);   // perfect separation
  EXPECT_EQ(roc_auc({0, 1, 2}, {3, 4, 5}), 0.0);   // reversed
  EXPECT_EQ(roc_auc({1, 2, 3}, {2}), 0.5);         // one loss, one tie, one win: 1.5 of 3
  EXPECT_EQ(roc_auc({7, 7}, {7, 7, 7}), 0.5);      // all ties
  EXPECT_DOUBLE_EQ(roc_auc({1, 3}, {0, 2, 4}), 3.0 / 6.0);
  // Both sides drawn from one normal distribution: within 4 null standard deviations of 1/2.
  Rng rng(11);
  std::vector<double> m(2000), n(3000);
  for (double& s : m) s = rng.normal();
  for (double& s : n) s = rng.normal();
  EXPECT_NEAR(roc_auc(m, n), 0.5, 4 * null_auc_sd(2000, 3000));
}

TEST(RocAuc, RejectsEmptySidesAndNaN) {
  EXPECT_THROW(roc_auc({}, {1.0}), std::invalid_argument);
  EXPECT_THROW(roc_auc({1.0}, {}), std::invalid_argument);
  EXPECT_THROW(roc_auc({1.0, NAN}, {0.0}), std::invalid_argument);
  EXPECT_THROW(roc_auc({1.0}, {NAN}), std::invalid_argument);
}

TEST(SequenceLosses, EqualTheModelsOwnCrossEntropy) {
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train(4, 10);
  LocalModel lm(m, t);
  train_on(lm, t, random_windows(4, m.seq_len, 21));  // away from the near-uniform initialisation
  const int n = 11;  // two full batches of 4 and a partial one
  const std::vector<int32_t> w = random_windows(n, m.seq_len, 22);
  const std::vector<double> loss = sequence_losses(lm.model, w.data(), n);
  ASSERT_EQ(loss.size(), (size_t)n);
  const size_t row = m.seq_len + 1;
  for (int i = 0; i < n; ++i) {
    const double ce = lm.model.forward(w.data() + i * row, 1, 0.0f).ce;
    EXPECT_NEAR(loss[i], ce, 1e-5 * ce) << "window " << i;
  }
  // The mean over a batch is the batch's cross-entropy.
  const double batch_ce = lm.model.forward(w.data(), 4, 0.0f).ce;
  EXPECT_NEAR((loss[0] + loss[1] + loss[2] + loss[3]) / 4, batch_ce, 1e-5 * batch_ce);
  // The windows differ: a single mean repeated would pass the batch check alone.
  EXPECT_GT(*std::max_element(loss.begin(), loss.end()) - *std::min_element(loss.begin(), loss.end()), 0.05);
  EXPECT_TRUE(sequence_losses(lm.model, w.data(), 0).empty());
  std::vector<int32_t> bad(w.begin(), w.begin() + row);
  bad[row - 1] = m.vocab_size;  // a target outside the vocabulary
  EXPECT_THROW(sequence_losses(lm.model, bad.data(), 1), std::runtime_error);
}

TEST(LoadedModel, ScoresACheckpointAsTheModelThatWroteIt) {
  const ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train(4, 10);
  LocalModel lm(m, t);
  train_on(lm, t, random_windows(4, m.seq_len, 31));
  RunConfig cfg;
  cfg.model = m;
  cfg.train = t;
  const std::string dir =
      (fs::temp_directory_path() / ("pcmoe-unit-" + std::to_string(::getpid()) + "-membership-ckpt")).string();
  save_checkpoint(dir, to_json(cfg), lm.params, &lm.opt, t.steps, "");
  LoadedModel loaded(dir, 4);
  const std::vector<int32_t> w = random_windows(6, m.seq_len, 32);
  const std::vector<double> a = sequence_losses(lm.model, w.data(), 6), b = sequence_losses(loaded.model, w.data(), 6);
  for (int i = 0; i < 6; ++i) EXPECT_DOUBLE_EQ(a[i], b[i]) << "window " << i;
  fs::remove_all(dir);
  EXPECT_THROW({ LoadedModel missing(dir, 4); }, std::runtime_error);
}

// The deliberately leaky setting: 16 random windows memorised by full-batch AdamW; 256 fresh
// windows from the same distribution are the non-members. The reference model starts from the
// same initialisation and trains the same way on 16 other windows.
TEST(Membership, MemorisedWindowsAreFoundAndUnseenOnesAreNot) {
  const ModelConfig m = tiny_model();
  const int n_members = 16, n_nonmembers = 256, steps = 60;
  const TrainConfig t = tiny_train(n_members, steps);
  const std::vector<int32_t> members = random_windows(n_members, m.seq_len, 41),
                             nonmembers = random_windows(n_nonmembers, m.seq_len, 42);
  LocalModel untrained(m, t), target(m, t), reference(m, t);
  train_on(target, t, members);
  train_on(reference, t, random_windows(n_members, m.seq_len, 43));

  const double member_loss = mean(sequence_losses(target.model, members.data(), n_members)),
               nonmember_loss = mean(sequence_losses(target.model, nonmembers.data(), n_nonmembers));
  std::printf("target: member loss %.4f, non-member loss %.4f (ln %d = %.4f)\n", member_loss, nonmember_loss,
              kSymbols, std::log((double)kSymbols));
  EXPECT_LT(member_loss, 0.5);  // memorised
  // Cross-entropy on fresh uniform tokens cannot fall below their entropy, ln 60 (up to the
  // sampling error of 256 windows' mean).
  EXPECT_GT(nonmember_loss, std::log((double)kSymbols) - 0.1);

  const MembershipResult leak =
      membership_inference(target.model, reference.model, members.data(), n_members, nonmembers.data(), n_nonmembers);
  std::printf("memorised: AUC loss %.4f, calibrated %.4f\n", leak.auc_loss, leak.auc_calibrated);
  EXPECT_EQ(leak.n_members, n_members);
  EXPECT_EQ(leak.n_nonmembers, n_nonmembers);
  EXPECT_GT(leak.auc_loss, 0.95);
  EXPECT_GT(leak.auc_calibrated, 0.95);

  // Not trained on: the untrained model's scores of members and non-members are exchangeable,
  // so the AUCs follow the Mann-Whitney null; 4 standard deviations (0.30 with 16 members) is a
  // band a correct implementation leaves with probability 6e-5.
  const MembershipResult before = membership_inference(untrained.model, reference.model, members.data(), n_members,
                                                       nonmembers.data(), n_nonmembers);
  std::printf("untrained target: AUC loss %.4f, calibrated %.4f\n", before.auc_loss, before.auc_calibrated);
  EXPECT_NEAR(before.auc_loss, 0.5, 4 * null_auc_sd(n_members, n_nonmembers));
  EXPECT_NEAR(before.auc_calibrated, 0.5, 4 * null_auc_sd(n_members, n_nonmembers));

  // Two fresh sets of 512, through the untrained and the trained target: also exchangeable, with
  // a band of 0.072.
  const int n_fresh = 512;
  const double band = 4 * null_auc_sd(n_fresh, n_fresh);
  const std::vector<int32_t> a = random_windows(n_fresh, m.seq_len, 44), b = random_windows(n_fresh, m.seq_len, 45);
  for (LocalModel* lm : {&untrained, &target}) {
    const MembershipResult fresh = membership_inference(lm->model, reference.model, a.data(), n_fresh, b.data(), n_fresh);
    std::printf("%s target, fresh against fresh: AUC loss %.4f, calibrated %.4f (band 0.5 +- %.4f)\n",
                lm == &target ? "trained" : "untrained", fresh.auc_loss, fresh.auc_calibrated, band);
    EXPECT_NEAR(fresh.auc_loss, 0.5, band);
    EXPECT_NEAR(fresh.auc_calibrated, 0.5, band);
  }
}

TEST(Membership, RejectsAReferenceOfAnotherShape) {
  ModelConfig m = tiny_model();
  const TrainConfig t = tiny_train(2, 10);
  LocalModel target(m, t);
  m.seq_len = 8;
  LocalModel reference(m, t);
  const std::vector<int32_t> w = random_windows(2, 16, 51);
  EXPECT_THROW(membership_inference(target.model, reference.model, w.data(), 1, w.data() + 17, 1), std::invalid_argument);
}
