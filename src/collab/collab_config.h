// The "collab" and "audit" sections of a run config: what `pcmoe collab` runs and how a pc-moe
// run crosses party boundaries, and a curious participant's recording of it. Checks that involve
// other sections are run_config_from_json's (collab/run_config.h).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace pcmoe {

// The "collab" section: which training modes `pcmoe collab` runs side by side.
struct CollabConfig {
  // "pc-moe", "centralised", "local-only" (each party alone, with the full model and with a
  // model of its own memory budget: the backbone and its share of the experts), and the
  // federated baselines (the rows of fed_mode_table(), collab/fed_config.h; run by src/fed/)
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
  // ones step it n times, which a larger expert lr may make up for (docs/protocol.md).
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

}  // namespace pcmoe
