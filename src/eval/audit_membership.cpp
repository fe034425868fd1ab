#include "eval/audit_membership.h"

#include <algorithm>
#include <stdexcept>

#include "collab/dp_batches.h"
#include "collab/runner.h"
#include "eval/loaded_model.h"
#include "eval/membership.h"
#include "privacy/dp_sgd.h"
#include "train/checkpoint.h"
#include "collab/fed_config.h"

namespace fs = std::filesystem;

namespace pcmoe::eval {
namespace {

// The released models of `run` that victim v's data went into, as the run saved them.
std::vector<std::pair<std::string, fs::path>> released_models(const fs::path& run, int v, int observer) {
  std::vector<std::pair<std::string, fs::path>> out = {
      {"pc-moe, the victim's model", run / ("party" + std::to_string(v)) / "checkpoint"},
      {"pc-moe, the observer's model", run / ("party" + std::to_string(observer)) / "checkpoint"},
      {"centralised", run / "centralised" / "checkpoint"},
      {"local-only, the victim's model", run / "local-only" / ("party" + std::to_string(v)) / "checkpoint"}};
  for (const FedMode& mode : fed_mode_table()) out.push_back({mode.name, run / mode.name / "checkpoint"});
  // Not saved: a deployment keeps no party's whole model.
  std::erase_if(out, [](const auto& m) { return !fs::exists(m.second / "model.safetensors"); });
  return out;
}

// Victim v's first `n_each` trained windows ([have, T+1] into `members`): the batches of its
// turns under the run's schedule, or with DP-SGD the units its Poisson draws picked, read from
// the run's record of them (the draws are secret).
struct Trained {
  int windows = 0;    // in `members`
  int64_t steps = 0;  // the victim's turns in the run
};
Trained trained_windows(const fs::path& run, const RunConfig& cfg, const CollabData& data, int v, int n_each,
                        std::vector<int32_t>& members) {
  const int T = cfg.model.seq_len;
  int have = 0;
  auto take = [&](const int32_t* windows, int count) {
    const int k = std::min(count, n_each - have);
    std::copy_n(windows, (size_t)k * (T + 1), members.begin() + (size_t)have * (T + 1));
    have += k;
  };
  if (cfg.privacy.enabled) {
    const PrivacyUnits units = make_privacy_units(data.parties[v].train.tokens, T, cfg.privacy.unit, data.bos_id);
    const DpBatches b = load_dp_batches(dp_batches_file(run, v), cfg.privacy.unit, units.n_units());
    for (const std::vector<int>& round : b.rounds)
      for (int u : round)
        if (have < n_each) take(units.window(units.first[u]), units.first[u + 1] - units.first[u]);
    return {have, (int64_t)b.rounds.size()};
  }
  const int per_turn = cfg.train.grad_accum * cfg.train.batch_size;
  std::vector<int32_t> turn((size_t)per_turn * (T + 1));
  for (int64_t step = 0; have < n_each && step < cfg.train.steps; ++step) {
    fill_turn(cfg, data.parties[v], step, turn.data());
    take(turn.data(), per_turn);
  }
  return {have, cfg.train.steps};
}

}  // namespace

nlohmann::json membership_cells(const std::vector<fs::path>& runs, int observer, int n_parties,
                                const fs::path& start_view) {
  nlohmann::json cells = nlohmann::json::array();
  for (const fs::path& run : runs) {
    std::vector<std::vector<std::pair<std::string, fs::path>>> models(n_parties);
    fs::path any;
    for (int v = 0; v < n_parties; ++v)
      if (v != observer && !(models[v] = released_models(run, v, observer)).empty()) any = models[v][0].second;
    if (any.empty()) continue;
    const RunConfig cfg = read_checkpoint_config(any.string());
    const int T = cfg.model.seq_len, n_each = 256;
    const CollabData data = load_collab_data(cfg);
    const fs::path own_local = run / "local-only" / ("party" + std::to_string(observer)) / "checkpoint";
    const bool local_reference = fs::exists(own_local);
    LoadedModel reference(local_reference ? own_local.string() : start_view.string(), 16);
    for (int v = 0; v < n_parties; ++v) {
      if (models[v].empty()) continue;
      std::vector<int32_t> members((size_t)n_each * (T + 1));
      const Trained trained = trained_windows(run, cfg, data, v, n_each, members);
      const int have = trained.windows;
      const int n_non = std::min(n_each, data.parties[v].n_val);
      if (have < 4 || n_non < 4) continue;  // too few windows for an AUC to mean anything
      for (const auto& [name, dir] : models[v]) {
        LoadedModel target(dir.string(), 16);
        const MembershipResult r = membership_inference(target.model, reference.model, members.data(), have,
                                                        data.parties[v].val_windows.data(), n_non);
        cells.push_back({{"run", run.string()}, {"victim", v}, {"model", name}, {"auc_loss", r.auc_loss},
                         {"auc_calibrated", r.auc_calibrated}, {"members", r.n_members},
                         {"nonmembers", r.n_nonmembers}, {"trained_steps", trained.steps},
                         {"reference", local_reference ? "the observer's local-only model" : "the shared start"},
                         {"members_from", cfg.privacy.enabled ? "the run's recorded Poisson batches" : "the schedule's batches"}});
      }
    }
  }
  return cells;
}


}  // namespace pcmoe::eval
