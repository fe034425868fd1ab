#include "eval/audit_membership.h"

#include "collab/runner.h"
#include "eval/loaded_model.h"
#include "eval/membership.h"
#include "train/checkpoint.h"

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
  for (const char* mode : {"fedavg", "int8", "topk-ef", "cg-fedllm", "fedavg-lora"})
    out.push_back({mode, run / mode / "checkpoint"});
  // Not saved: a deployment keeps no party's whole model.
  std::erase_if(out, [](const auto& m) { return !fs::exists(m.second / "model.safetensors"); });
  return out;
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
      const int per_turn = cfg.train.grad_accum * cfg.train.batch_size;
      std::vector<int32_t> turn((size_t)per_turn * (T + 1));
      int have = 0;
      for (int64_t step = 0; have < n_each && step < cfg.train.steps; ++step) {
        fill_turn(cfg, data.parties[v], step, turn.data());
        const int take = std::min(per_turn, n_each - have);
        std::copy_n(turn.begin(), (size_t)take * (T + 1), members.begin() + (size_t)have * (T + 1));
        have += take;
      }
      const int n_non = std::min(n_each, data.parties[v].n_val);
      if (have < 4 || n_non < 4) continue;  // too few windows for an AUC to mean anything
      for (const auto& [name, dir] : models[v]) {
        LoadedModel target(dir.string(), 16);
        const MembershipResult r = membership_inference(target.model, reference.model, members.data(), have,
                                                        data.parties[v].val_windows.data(), n_non);
        cells.push_back({{"run", run.string()}, {"victim", v}, {"model", name}, {"auc_loss", r.auc_loss},
                         {"auc_calibrated", r.auc_calibrated}, {"members", r.n_members},
                         {"nonmembers", r.n_nonmembers}, {"trained_steps", cfg.train.steps},
                         {"reference", local_reference ? "the observer's local-only model" : "the shared start"}});
      }
    }
  }
  return cells;
}


}  // namespace pcmoe::eval
