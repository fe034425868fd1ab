// The "privacy" section of a run config: DP-SGD (docs/privacy.md). Present = on.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace pcmoe {

struct PrivacyConfig {
  bool enabled = false;
  double epsilon = 0;           // target ε for train.steps (> 0); absent: none (noise_multiplier set)
  double delta = 0;             // in (0, 1/N) (N privacy units); absent: 1/(10N)
  bool allow_weak_delta = false;  // accept delta >= 1/N (a run that leaks one unit whole meets it)
  double clip = 1.0;            // C: bound on each unit's gradient norm (in total, per-layer too)
  double sampling_rate = 0;     // q: each unit joins a step's batch with this probability
  double noise_multiplier = 0;  // σ (> 0); absent: calibrated so that train.steps spend exactly ε
  std::string accountant = "rdp";
  std::string conversion = "improved";  // RDP to (ε, δ): "improved" (Opacus today) | "classic"
  std::string unit = "sequence";        // "sequence" | "document" (all its sequences together)
  std::string aux_loss = "per-unit";    // Switch load balancing: "per-unit" (per sequence) | "off"
  std::string clipping = "flat";        // "flat" | "per-layer" (C/sqrt(groups) per clip group)
  int64_t test_seed = -1;  // >= 0: seeded Poisson batches and noise, repeatable and NOT private (tests)
  std::string sampling = "poisson";     // the only batch mode DP-SGD accepts
};
PrivacyConfig privacy_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const PrivacyConfig& c);

}  // namespace pcmoe
