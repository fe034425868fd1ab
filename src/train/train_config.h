// The "train" section of a run config, and the whole run config (model + train + data).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "data/data.h"
#include "data/parties.h"
#include "model/config.h"
#include "privacy/privacy_config.h"
#include "train/fed_config.h"

namespace pcmoe {

struct TrainConfig {
  int batch_size = 16;     // sequences per micro-batch
  int grad_accum = 1;      // micro-batches per optimizer step
  int steps = 600;         // optimizer steps (also the cosine schedule's horizon)
  float lr = 3e-3f;
  float min_lr = 3e-4f;
  int warmup = 50;
  float weight_decay = 0.1f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float grad_clip = 1.0f;  // global L2 norm; 0 disables clipping
  uint64_t seed = 1;       // initialisation and batch sampling
  int threads = 2;         // fixed thread count: results are bitwise reproducible at a given count
  int eval_every = 100;    // steps between validation evaluations (0: only at the end)
  int eval_windows = 64;   // validation windows of seq_len tokens per evaluation
  int log_every = 10;      // steps between metrics.jsonl lines
  int checkpoint_every = 0;  // steps between checkpoints (0: only at the end)
  void validate() const;
};
TrainConfig train_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const TrainConfig& c);

// The "collab" section: which training modes `pcmoe collab` runs side by side.
struct CollabConfig {
  // "pc-moe", "centralised", "local-only" (each party alone, with the full model and with a
  // model of its own memory budget: the backbone and its share of the experts), and the
  // federated baselines (the rows of fed_mode_table(), train/fed_config.h; run by src/fed/)
  std::vector<std::string> modes = {"pc-moe", "centralised", "local-only"};
  // A `pcmoe train` checkpoint directory every party's backbone and every expert starts from
  // (the same model config), with its tokenizer; empty: the seeded initialisation of train.seed
  // and a tokenizer trained on the parties' training documents.
  std::string init_from;
  // Defence against curious expert hosts: Gaussian noise of std state_noise x (the row's RMS)
  // on every hidden state a party sends to another party's experts (its own experts get the
  // exact state). From a secure source, or from state_noise_seed when it is non-zero (tests).
  double state_noise = 0;
  uint64_t state_noise_seed = 0;
  // How pc-moe's expert calls carry their float rows (hidden states, output gradients and the
  // replies): "fp32", "bf16" or "fp16" (src/collab/expert_wire.h); DP-SGD runs take fp32 only.
  std::string wire_dtype = "fp32";
  // What crosses a party boundary in a pc-moe turn (docs/protocol.md): "activations" (routed
  // hidden states and their gradients go to the experts' hosts) or "weights" (the data owner
  // fetches every expert's weights, runs them itself and sends each host its experts' gradient
  // sums: src/collab/weights_turn.h). Weights mode takes wire_dtype fp32 or bf16.
  std::string exchange = "activations";
  // How pc-moe's parties share a round (docs/protocol.md, src/collab/schedule.h): "sequential"
  // (one turn after another in a seeded order; each host steps after every turn) or
  // "concurrent" (every party's turn at once against the experts of the round's start; each host
  // steps once per round on the parties' combined gradient).
  std::string schedule = "sequential";
  // The experts' learning rate as a multiple of train.lr's schedule (a party sends its hosts
  // lr x expert_lr_scale): concurrent rounds step each expert once per round where sequential
  // ones step it n times, which a larger expert lr may make up for (README, "Concurrent rounds").
  float expert_lr_scale = 1.0f;
};
CollabConfig collab_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const CollabConfig& c);

// The "audit" section: a curious participant's recording of a pc-moe run (docs/audit.md).
// Present = on.
struct AuditConfig {
  bool enabled = false;
  int observer = 0;          // the party whose received payloads are recorded
  int64_t record_every = 0;  // record rounds 0, r, 2r, ... and the last; 0: train.steps / 4
};
AuditConfig audit_config_from_json(const nlohmann::json& j, int n_parties);
nlohmann::json to_json(const AuditConfig& c);

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
  data::DataConfig data;
  data::PartySplitConfig parties;  // how documents are dealt to parties (pcmoe collab)
  CollabConfig collab;
  PrivacyConfig privacy;
  FedConfig fed;  // the federated baselines' settings
  AuditConfig audit;
};
// The JSON of a config file: clear errors for a missing file and bad JSON.
nlohmann::json read_config_json(const std::string& path);
// Reads and checks a config file: clear errors for a missing file, bad JSON, unknown keys.
RunConfig load_run_config(const std::string& path);
RunConfig run_config_from_json(const nlohmann::json& j);
// Tokens one optimizer step trains: grad_accum micro-batches of batch_size sequences of seq_len.
int64_t tokens_per_step(const RunConfig& cfg);
nlohmann::json to_json(const RunConfig& c);

}  // namespace pcmoe
