// The leakage audit of collab.exchange "weights" (docs/audit.md): a curious host receives, on
// each other party's turn, only the turn's gradient sums of its own experts (no hidden state, no
// output gradient). At the first MoE layer the sum of an expert's w1 (and w3) is Σ_r g_r x_rᵀ
// over the rows r routed to it, x_r the row's input: the token's normalised residual. So the
// sum is large along the inputs of the turn's tokens, and the host reads a bag of words off it
// with the rule of the LoRA server attack (eval/bag_of_words.h), fitted on a shadow turn of its
// own on its public text through its own view of the model.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "collab/recorder.h"
#include "collab/runner.h"
#include "eval/bag_of_words.h"
#include "model/params.h"

namespace pcmoe::eval {

// The first MoE layer of mc (throws when it has none).
int first_moe_layer(const ModelConfig& mc);

// Each token's input to the first MoE layer's experts as the attacker estimates it from a model
// it holds: the token's embedding RMS-normalised, times that layer's ffn_norm weight (the
// attention's share of the residual is left out). [V, C]
std::vector<float> first_moe_inputs(const ParamSet& params, const ModelConfig& mc);

// Per token: the log energy of each gradient sum (an expert's w1 or w3, [d_ff, d_model]) along
// the token's input.
TokenFeatures expert_grad_features(const std::vector<const float*>& grads, const ModelConfig& mc, const float* inputs);

// The attack on a weights-mode recording, per recorded round and victim: precision and recall
// of the guessed bag of words of the victim's turn next to chance (|tokens| / V) and the prior
// (the shadow turn's own tokens). The truth is the victim's turn: rebuilt from the config, or
// under DP-SGD read from run_dir/party<v>/dp_batches.json (its Poisson-sampled units). `windows`:
// n_windows public windows of the observer (T + 1 tokens each).
nlohmann::json weights_bag_of_words(const std::filesystem::path& run_dir, const RunConfig& cfg, const Recording& rec,
                                    const std::vector<int64_t>& rounds, const CollabData& data,
                                    const std::vector<int32_t>& windows, int n_windows);

}  // namespace pcmoe::eval
