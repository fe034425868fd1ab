// Membership inference against a released model: does a window's loss give away that it was
// trained on? Two attacks, each measured by the ROC AUC of its score on known members against
// known non-members (0.5: no leak; 1: every member found).
//   loss threshold (Yeom et al. 2018): score = -loss_target(x)
//   reference-calibrated (Watson et al. 2022 "difficulty calibration", Carlini et al. 2022
//   LiRA without shadow-model Gaussians): score = loss_reference(x) - loss_target(x), where the
//   reference model saw similar data but not x, so a window that is merely easy scores low.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace pcmoe {

// P(member score > non-member score) over all member/non-member pairs, ties counting 1/2
// (the Mann-Whitney U statistic over n_m * n_n). Exact, O(n log n). Throws
// std::invalid_argument if either side is empty or a score is NaN.
double roc_auc(const std::vector<double>& member_scores, const std::vector<double>& nonmember_scores);

// Mean cross-entropy (nats per token) of each of `n_windows` windows[n_windows, seq_len+1]
// (inputs the first seq_len tokens, targets the last seq_len), in batches of model.max_batch().
// Inference only: no gradient is touched.
std::vector<double> sequence_losses(Model& model, const int32_t* windows, int n_windows);

struct MembershipResult {
  double auc_loss;        // loss-threshold attack
  double auc_calibrated;  // reference-calibrated attack
  int n_members, n_nonmembers;
};

// Both attacks on `target`, calibrated by `reference` (same vocabulary and seq_len), with
// members[n_members, seq_len+1] and nonmembers[n_nonmembers, seq_len+1]. Throws
// std::invalid_argument if the models' shapes differ or a side is empty.
MembershipResult membership_inference(Model& target, Model& reference, const int32_t* members, int n_members,
                                      const int32_t* nonmembers, int n_nonmembers);

}  // namespace pcmoe
