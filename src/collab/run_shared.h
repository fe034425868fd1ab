// The state `pcmoe collab`'s own modes share (collab/runner.cpp, pcmoe_mode.cpp,
// solo_modes.cpp): the parties' data, the pooled validation windows, DP-SGD's plans, the
// metrics file; and the evaluation, curve and progress helpers every mode uses. Internal to
// those files.
#pragma once
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collab/runner.h"
#include "privacy/dp_sgd.h"
#include "train/step.h"
#include "train/trainer.h"

namespace pcmoe {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

struct Shared {
  const RunConfig& cfg;
  std::vector<PartyStreams> parties;
  std::vector<int32_t> pooled_val;
  int n_pooled_val = 0;
  std::ofstream metrics;
  int64_t tokens_per_turn = 0;
  fs::path out_dir;
  std::string tokenizer_model;
  // DP-SGD (privacy section): each party's units and plan (its own budget), the rounds the
  // tightest budget allows, the micro-batch that holds any unit, the model config trained.
  std::vector<PrivacyUnits> units;
  std::vector<DpPlan> plans;
  std::vector<PoissonSampler> batches;  // one per party, shared by every mode: equal batches
  int64_t rounds = 0;
  int dp_max_batch = 0;
  ModelConfig dp_model;
  std::vector<int> val_parts;  // windows of each party in pooled_val, in party order
  // Every validation pass (the table's and the learning curves'), measured: what it costs.
  double eval_seconds = 0, eval_cpu_seconds = 0;
  int64_t eval_windows = 0;
  // The curves' first points by the weights evaluated: every mode starts from the same weights,
  // so the start is evaluated once (keyed by a hash, so a mode that starts elsewhere is evaluated).
  std::map<std::string, double> start_losses;
};

bool private_run(const Shared& sh);
// The DP noise stream of party p's tensors in round `round`.
uint64_t noise_stream(int p, int64_t round);
// One model on every party's validation windows, timed. The learning curves use the same
// windows as the final table, so a curve's last point is the table's pooled loss.
PartsLoss evaluate_pooled(Model& model, Shared& sh);
// A model's validation loss for party `own`: on the pooled validation data and on its own.
nlohmann::json party_losses(const PartsLoss& r, int own);
nlohmann::json evaluate_everywhere(Model& model, Shared& sh, int own);
double curve_loss(Model& model, Shared& sh);
// The curve's loss at the start of a mode, whose model holds `params`.
double start_loss(Model& model, const ParamSet& params, Shared& sh);
bool curve_due(const Shared& sh, int64_t done);
// collab's own modes take the curve's last point from the final evaluation, not a pass of its own.
bool curve_due_before_end(const Shared& sh, int64_t done);
nlohmann::json curve_point(int64_t done, const Shared& sh, double bytes_sent, double bytes_received, double loss);
void progress(const char* mode, int64_t done, int64_t total, float loss, double s);
void fill_turn(const Shared& sh, int party, int64_t step, int32_t* windows);

// PC-MoE: every party trains on its own data in the seeded round-robin (or, collab.schedule
// "concurrent", all at once, one thread each); experts on their hosts.
nlohmann::json run_pcmoe(Shared& sh);
// One model trained on the turns of `parties` in the round-robin order (all of them: the
// centralised model on the pooled data; one: a local-only model).
// `save_as`: the checkpoint's directory under the run's (empty: not saved). `with_curve`: record
// the learning curve (the figure leaves the memory-budget models out, so they skip its cost).
nlohmann::json run_solo(Shared& sh, const char* mode, const ModelConfig& mc, const std::vector<int>& parties,
                        int own, const std::string& save_as, bool with_curve);

}  // namespace pcmoe
