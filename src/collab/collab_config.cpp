#include "collab/collab_config.h"

#include <stdexcept>

#include "collab/fed_config.h"
#include "common/json_fields.h"

namespace pcmoe {
namespace {

// The collab section's keys; exchange, schedule and expert_lr_scale came later and are written
// only when not their defaults.
const auto collab_fields = [](auto& c, auto&& field) {
  field("modes", c.modes);
  field("init_from", c.init_from);
  field("state_noise", c.state_noise);
  field("state_noise_seed", c.state_noise_seed);
  field("wire_dtype", c.wire_dtype);
  field("exchange", c.exchange, std::string("activations"));
  field("schedule", c.schedule, std::string("sequential"));
  field("expert_lr_scale", c.expert_lr_scale, 1.0f);
};

// The audit section's keys.
const auto audit_fields = [](auto& c, auto&& field) {
  field("observer", c.observer);
  field("record_every", c.record_every);
};

}  // namespace

CollabConfig collab_config_from_json(const nlohmann::json& j) {
  CollabConfig c;
  JsonFields f(j, "collab");
  read_fields(f, c, collab_fields);
  f.reject_unknown();
  if (c.exchange != "activations" && c.exchange != "weights")
    throw std::runtime_error("config key 'collab.exchange' must be \"activations\" or \"weights\", not '" + c.exchange + "'");
  if (c.schedule != "sequential" && c.schedule != "concurrent")
    throw std::runtime_error("config key 'collab.schedule' must be \"sequential\" or \"concurrent\", not '" + c.schedule +
                             "'");
  if (!(c.expert_lr_scale > 0 && c.expert_lr_scale <= 1000))
    throw std::runtime_error("config key 'collab.expert_lr_scale' must be in (0, 1000], not " +
                             std::to_string(c.expert_lr_scale));
  if (c.exchange == "weights" && c.wire_dtype == "fp16")
    throw std::runtime_error("config key 'collab.wire_dtype' must be fp32 or bf16 with collab.exchange \"weights\" "
                             "(expert weights and gradient sums need fp32's range)");
  if (c.exchange == "weights" && c.state_noise > 0)
    throw std::runtime_error("config key 'collab.state_noise' perturbs hidden states, which collab.exchange \"weights\" "
                             "never sends: set one of them");
  if (!(c.state_noise >= 0 && c.state_noise <= 100))
    throw std::runtime_error("config key 'collab.state_noise' must be in [0, 100] (a std relative to each row's RMS)");
  if (c.modes.empty()) throw std::runtime_error("config key 'collab.modes' must name at least one mode");
  for (const std::string& m : c.modes)
    if (m != "pc-moe" && m != "centralised" && m != "local-only" && !is_fed_mode(m))
      throw std::runtime_error("config key 'collab.modes': unknown mode '" + m +
                               "' (expected pc-moe, centralised, local-only, " + fed_mode_names() + ")");
  return c;
}

nlohmann::json to_json(const CollabConfig& c) { return fields_to_json(c, collab_fields); }

AuditConfig audit_config_from_json(const nlohmann::json& j, int n_parties) {
  AuditConfig c;
  c.enabled = true;
  JsonFields f(j, "audit");
  read_fields(f, c, audit_fields);
  f.reject_unknown();
  if (c.observer < 0 || c.observer >= n_parties)
    throw std::runtime_error("config key 'audit.observer' must name a party in 0.." + std::to_string(n_parties - 1));
  if (c.record_every < 0) throw std::runtime_error("config key 'audit.record_every' must be >= 0");
  return c;
}

nlohmann::json to_json(const AuditConfig& c) { return fields_to_json(c, audit_fields); }

}  // namespace pcmoe
