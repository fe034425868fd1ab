#include "privacy/privacy_config.h"

#include <cmath>
#include <stdexcept>

#include "common/json_fields.h"

namespace pcmoe {
namespace {

// The section's keys, each declared once (common/json_fields.h). epsilon, delta and
// noise_multiplier may be absent (0 stands for "not given", which the checks below keep to):
// absent keys stay absent, so a checkpoint's config reads back.
const auto privacy_fields = [](auto& c, auto&& field) {
  field("epsilon", c.epsilon, 0.0);
  field("delta", c.delta, 0.0);
  field("allow_weak_delta", c.allow_weak_delta);
  field("clip", c.clip);
  field("sampling_rate", c.sampling_rate);
  field("noise_multiplier", c.noise_multiplier, 0.0);
  field("accountant", c.accountant);
  field("conversion", c.conversion);
  field("unit", c.unit);
  field("aux_loss", c.aux_loss);
  field("clipping", c.clipping);
  field("test_seed", c.test_seed);
  field("sampling", c.sampling);
};

}  // namespace

PrivacyConfig privacy_config_from_json(const nlohmann::json& j) {
  PrivacyConfig c;
  c.enabled = true;
  JsonFields f(j, "privacy");
  read_fields(f, c, privacy_fields);
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

nlohmann::json to_json(const PrivacyConfig& c) { return fields_to_json(c, privacy_fields); }

}  // namespace pcmoe
