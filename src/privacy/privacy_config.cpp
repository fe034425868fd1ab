#include "privacy/privacy_config.h"

#include <cmath>
#include <stdexcept>

#include "common/json_fields.h"

namespace pcmoe {

PrivacyConfig privacy_config_from_json(const nlohmann::json& j) {
  PrivacyConfig c;
  c.enabled = true;
  JsonFields f(j, "privacy");
  f.read("epsilon", c.epsilon);
  f.read("delta", c.delta);
  f.read("allow_weak_delta", c.allow_weak_delta);
  f.read("clip", c.clip);
  f.read("sampling_rate", c.sampling_rate);
  f.read("noise_multiplier", c.noise_multiplier);
  f.read("accountant", c.accountant);
  f.read("conversion", c.conversion);
  f.read("unit", c.unit);
  f.read("aux_loss", c.aux_loss);
  f.read("clipping", c.clipping);
  f.read("test_seed", c.test_seed);
  f.read("sampling", c.sampling);
  // The key before test_seed: -1 ("secure") is what configs saved in checkpoints still carry.
  int64_t noise_seed = -1;
  f.read("noise_seed", noise_seed);
  f.reject_unknown();
  if (noise_seed >= 0)
    throw std::runtime_error("config key 'privacy.noise_seed' is now 'privacy.test_seed' (it seeds the batches "
                             "and the noise: repeatable, not private)");
  auto require = [](bool ok, const std::string& msg) {
    if (!ok) throw std::runtime_error("config section 'privacy': " + msg);
  };
  require(c.sampling == "poisson", "sampling must be \"poisson\": the accountant's guarantee holds for Poisson batches only");
  require(c.sampling_rate > 0 && c.sampling_rate <= 1, "sampling_rate must be in (0, 1]");
  require(c.clip > 0 && std::isfinite(c.clip), "clip must be > 0");
  require(!j.contains("epsilon") || (c.epsilon > 0 && std::isfinite(c.epsilon)), "epsilon must be > 0");
  require(!j.contains("noise_multiplier") || (c.noise_multiplier > 0 && std::isfinite(c.noise_multiplier)),
          "noise_multiplier must be > 0");
  require(c.epsilon > 0 || c.noise_multiplier > 0, "set epsilon (a budget) or noise_multiplier (or both)");
  require(!j.contains("delta") || (c.delta > 0 && c.delta < 1), "delta must be in (0, 1) (leave it out for 1/(10N))");
  require(c.accountant == "rdp", "accountant must be \"rdp\"");
  require(c.conversion == "improved" || c.conversion == "classic", "conversion must be \"improved\" or \"classic\"");
  require(c.unit == "sequence" || c.unit == "document", "unit must be \"sequence\" or \"document\"");
  require(c.aux_loss == "per-unit" || c.aux_loss == "off", "aux_loss must be \"per-unit\" or \"off\"");
  require(c.clipping == "flat" || c.clipping == "per-layer", "clipping must be \"flat\" or \"per-layer\"");
  return c;
}

nlohmann::json to_json(const PrivacyConfig& c) {
  nlohmann::json j = {{"clip", c.clip},         {"sampling_rate", c.sampling_rate}, {"accountant", c.accountant},
                      {"conversion", c.conversion}, {"unit", c.unit},             {"aux_loss", c.aux_loss},
                      {"clipping", c.clipping},     {"test_seed", c.test_seed},     {"sampling", c.sampling},
                      {"allow_weak_delta", c.allow_weak_delta}};
  // Absent keys stay absent (0 stands for "not given"), so a checkpoint's config reads back.
  if (c.epsilon > 0) j["epsilon"] = c.epsilon;
  if (c.delta > 0) j["delta"] = c.delta;
  if (c.noise_multiplier > 0) j["noise_multiplier"] = c.noise_multiplier;
  return j;
}

}  // namespace pcmoe
