#include "eval/membership.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pcmoe {

double roc_auc(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores) {
  if (member_scores.empty() || nonmember_scores.empty())
    throw std::invalid_argument("roc_auc needs at least one member and one non-member score");
  std::vector<double> non(nonmember_scores);
  for (double s : non)
    if (std::isnan(s)) throw std::invalid_argument("roc_auc: a non-member score is NaN");
  std::sort(non.begin(), non.end());
  // Twice the pair count (a win counts 2, a tie 1) stays an exact integer up to 2^64.
  uint64_t twice_wins = 0;
  for (double s : member_scores) {
    if (std::isnan(s)) throw std::invalid_argument("roc_auc: a member score is NaN");
    const auto lo = std::lower_bound(non.begin(), non.end(), s), hi = std::upper_bound(lo, non.end(), s);
    twice_wins += 2 * uint64_t(lo - non.begin()) + uint64_t(hi - lo);
  }
  return (double)twice_wins / (2.0 * (double)member_scores.size() * (double)non.size());
}

std::vector<double> sequence_losses(Model& model, const int32_t* windows, int n_windows) {
  if (n_windows < 0) throw std::invalid_argument("sequence_losses: negative window count");
  const int T = model.config().seq_len, V = model.config().vocab_size, B = model.max_batch();
  const size_t row = (size_t)T + 1;
  for (size_t i = 0; i < (size_t)n_windows * row; ++i)
    if (windows[i] < 0 || windows[i] >= V)
      throw std::runtime_error("sequence_losses: token id " + std::to_string(windows[i]) + " outside the vocabulary of " +
                               std::to_string(V));
  std::vector<double> out(n_windows);
  std::vector<int32_t> inputs((size_t)B * T);
  std::vector<double> token_loss((size_t)B * T);
  for (int i = 0; i < n_windows; i += B) {
    const int b = std::min(B, n_windows - i);
    const int32_t* w = windows + (size_t)i * row;
    for (int r = 0; r < b; ++r) std::memcpy(&inputs[(size_t)r * T], w + r * row, T * sizeof(int32_t));
    const float* logits = model.logits(inputs.data(), b);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < b * T; ++t) {
      const float* l = logits + (size_t)t * V;
      const float mx = *std::max_element(l, l + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += std::exp(l[v] - mx);
      const int32_t target = w[(size_t)(t / T) * row + t % T + 1];
      token_loss[t] = std::log(sum) - ((double)l[target] - mx);
    }
    // Summed serially, in token order: the result does not depend on the thread count.
    for (int r = 0; r < b; ++r) {
      double s = 0;
      for (int t = 0; t < T; ++t) s += token_loss[(size_t)r * T + t];
      out[i + r] = s / T;
    }
  }
  return out;
}

MembershipResult membership_inference(Model& target, Model& reference, const int32_t* members, int n_members,
                                      const int32_t* nonmembers, int n_nonmembers) {
  const ModelConfig &a = target.config(), &b = reference.config();
  if (a.seq_len != b.seq_len || a.vocab_size != b.vocab_size)
    throw std::invalid_argument("membership_inference: the reference model has seq_len " + std::to_string(b.seq_len) +
                                " and vocabulary " + std::to_string(b.vocab_size) + ", the target " +
                                std::to_string(a.seq_len) + " and " + std::to_string(a.vocab_size));
  if (n_members < 1 || n_nonmembers < 1)
    throw std::invalid_argument("membership_inference needs at least one member and one non-member window");
  const std::vector<double> tm = sequence_losses(target, members, n_members),
                            tn = sequence_losses(target, nonmembers, n_nonmembers),
                            rm = sequence_losses(reference, members, n_members),
                            rn = sequence_losses(reference, nonmembers, n_nonmembers);
  std::vector<double> loss_m(n_members), loss_n(n_nonmembers), cal_m(n_members), cal_n(n_nonmembers);
  for (int i = 0; i < n_members; ++i) {
    loss_m[i] = -tm[i];
    cal_m[i] = rm[i] - tm[i];
  }
  for (int i = 0; i < n_nonmembers; ++i) {
    loss_n[i] = -tn[i];
    cal_n[i] = rn[i] - tn[i];
  }
  return {roc_auc(loss_m, loss_n), roc_auc(cal_m, cal_n), n_members, n_nonmembers};
}

}  // namespace pcmoe
