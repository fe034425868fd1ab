// The "fed" section of a run config: the federated baselines of `pcmoe collab` (modes fedavg,
// int8, topk-ef, cg-fedllm, fedavg-lora). See docs/federated.md. It lives in collab/, below
// fed/, because collab/ reads it: collab.modes is checked against the mode table here, and the
// run config collab/ assembles (collab/run_config.h) holds the section for fed/, eval/ and net/.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/lora.h"

namespace pcmoe {

struct FedConfig {
  int local_steps = 1;      // E: local AdamW steps per round (1: FedSGD); rounds = train.steps / E
  int block_size = 1024;    // floats per block: int8 scales and the autoencoder's input
  int latent_ratio = 64;    // block floats per latent float (latent = block_size / latent_ratio)
  float ae_lr = 1e-3f;      // Adam learning rate of the autoencoder (TGAP and FAF)
  int ae_batch = 64;        // blocks per autoencoder step
  int tgap_steps = 20;      // recorded steps of the public fine-tuning run (0: no TGAP)
  int tgap_blocks = 256;    // blocks sampled from each recorded update
  int tgap_epochs = 10;     // passes over the recorded blocks
  int faf_steps = 4;        // autoencoder steps per round on the party's own update (0: no FAF)
  // Corpus categories treated as public (the TGAP run trains on their training documents); no
  // party may hold them. Required by cg-fedllm when tgap_steps > 0.
  std::vector<std::string> public_categories;
  // cg-fedllm: a saved autoencoder (safetensors of `pcmoe collab`'s cg-fedllm/autoencoder) to
  // start from instead of TGAP; empty: TGAP (or a fresh one with tgap_steps 0).
  std::string autoencoder;
  // fedavg-lora: the adapters (rank, alpha, targets; see model/lora.h).
  LoraSpec lora{8, 16.0f, {"wq", "wk", "wv", "wo", "experts"}};
  // The server's step with the round's mean update Δ: "avg" (global += Δ) or "adam" (FedAdam,
  // Reddi et al. 2021: m = β1 m + (1-β1) Δ, v = β2 v + (1-β2) Δ², global += lr m / (√v + τ)).
  std::string server_optimizer = "avg";
  float server_lr = 1e-2f, server_beta1 = 0.9f, server_beta2 = 0.99f, server_tau = 1e-3f;
  int latent() const { return block_size / latent_ratio; }
};
FedConfig fed_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const FedConfig& c);
// Checks what depends on other sections: rounds must divide train.steps, cg-fedllm's TGAP needs
// public data, fedavg-lora's adapters must fit the model. Throws std::runtime_error naming the key.
void check_fed_config(const FedConfig& c, const ModelConfig& model, int train_steps,
                      const std::vector<std::string>& modes);

// How a federated mode's update crosses the wire: as it is, or through one of fed/'s codecs
// (fed::make_codec builds each).
enum class FedCodec { fp32, int8, topk_ef, autoencoder };

// The federated modes of `pcmoe collab` and of a deployment, one row each: the one place their
// names are written. The config checks, the runner, the deployment and the audit read the rows.
struct FedMode {
  const char* name;
  FedCodec codec;
  bool lora;  // trains LoRA adapters over a frozen shared base, not the whole model
  // The update loses precision on the wire (its fidelity is reported), cut into fed.block_size blocks.
  bool compressed() const { return codec != FedCodec::fp32; }
};
const std::vector<FedMode>& fed_mode_table();
// The row named `mode`, or nullptr when it is not a federated mode.
const FedMode* find_fed_mode(const std::string& mode);
// The row named `mode`; throws std::runtime_error when there is none.
const FedMode& fed_mode(const std::string& mode);
// The modes of `pcmoe collab` that are federated baselines.
bool is_fed_mode(const std::string& mode);
// The table's names in order, joined by ", " (the last by `last_separator`), for error messages.
std::string fed_mode_names(const std::string& last_separator = ", ");

}  // namespace pcmoe
