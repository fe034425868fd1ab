#include "train/train_config.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/json_fields.h"

namespace pcmoe {

void TrainConfig::validate() const {
  auto require = [](bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("invalid train config: ") + what);
  };
  require(batch_size >= 1 && grad_accum >= 1 && steps >= 1, "batch_size, grad_accum and steps must be >= 1");
  require(lr > 0 && min_lr >= 0 && min_lr <= lr, "need lr > 0 and 0 <= min_lr <= lr");
  require(warmup >= 0 && warmup < steps, "warmup must be in [0, steps)");
  require(weight_decay >= 0, "weight_decay must be >= 0");
  require(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0, "need betas in [0, 1) and eps > 0");
  require(grad_clip >= 0, "grad_clip must be >= 0");
  require(threads >= 1 && threads <= 256, "threads must be in [1, 256]");
  require(eval_every >= 0 && eval_windows >= 1 && log_every >= 1 && checkpoint_every >= 0,
          "eval_every >= 0, eval_windows >= 1, log_every >= 1, checkpoint_every >= 0");
}

namespace {

// The train section's keys, each declared once (common/json_fields.h).
const auto train_fields = [](auto& c, auto&& field) {
  field("batch_size", c.batch_size);
  field("grad_accum", c.grad_accum);
  field("steps", c.steps);
  field("lr", c.lr);
  field("min_lr", c.min_lr);
  field("warmup", c.warmup);
  field("weight_decay", c.weight_decay);
  field("beta1", c.beta1);
  field("beta2", c.beta2);
  field("eps", c.eps);
  field("grad_clip", c.grad_clip);
  field("seed", c.seed);
  field("threads", c.threads);
  field("eval_every", c.eval_every);
  field("eval_windows", c.eval_windows);
  field("log_every", c.log_every);
  field("checkpoint_every", c.checkpoint_every);
};

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

TrainConfig train_config_from_json(const nlohmann::json& j) {
  TrainConfig c;
  JsonFields f(j, "train");
  read_fields(f, c, train_fields);
  f.reject_unknown();
  c.validate();
  return c;
}

nlohmann::json to_json(const TrainConfig& c) { return fields_to_json(c, train_fields); }

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

int64_t tokens_per_step(const RunConfig& cfg) {
  return (int64_t)cfg.train.grad_accum * cfg.train.batch_size * cfg.model.seq_len;
}

RunConfig run_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw std::runtime_error("config must be a JSON object with sections model, train, data, parties, collab, privacy");
  for (auto& [key, value] : j.items())
    if (key != "model" && key != "train" && key != "data" && key != "parties" && key != "collab" && key != "fed" &&
        key != "privacy" && key != "audit")
      throw std::runtime_error("unknown config section '" + key +
                               "' (expected model, train, data, parties, collab, fed, privacy, audit)");
  RunConfig c;
  static const nlohmann::json empty = nlohmann::json::object();
  c.model = model_config_from_json(j.contains("model") ? j["model"] : empty);
  c.train = train_config_from_json(j.contains("train") ? j["train"] : empty);
  c.data = data::data_config_from_json(j.contains("data") ? j["data"] : empty);
  c.data.vocab_size = c.model.vocab_size;
  c.parties = data::party_split_config_from_json(j.contains("parties") ? j["parties"] : empty);
  c.collab = collab_config_from_json(j.contains("collab") ? j["collab"] : empty);
  if (!c.collab.init_from.empty() && !c.data.tokenizer.empty())
    throw std::runtime_error("config keys 'collab.init_from' and 'data.tokenizer' both name a tokenizer (the "
                             "checkpoint brings its own): drop data.tokenizer");
  c.fed = fed_config_from_json(j.contains("fed") ? j["fed"] : empty);
  check_fed_config(c.fed, c.model, c.train.steps, c.collab.modes);
  if (j.contains("audit")) c.audit = audit_config_from_json(j["audit"], c.parties.n_parties);
  if (j.contains("privacy")) {
    c.privacy = privacy_config_from_json(j["privacy"]);
    if (c.train.grad_accum != 1)
      throw std::runtime_error("train.grad_accum must be 1 with a privacy section: DP-SGD batches are Poisson draws "
                               "of privacy.sampling_rate x units, not fixed accumulated batches");
    if (c.collab.wire_dtype != "fp32")
      throw std::runtime_error("collab.wire_dtype must be fp32 with a privacy section: the per-unit clipping of "
                               "DP-SGD is computed and tested on fp32 expert calls only");
  }
  return c;
}

nlohmann::json read_config_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open config file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error("config file '" + path + "' is not valid JSON: " + e.what());
  }
  return j;
}

RunConfig load_run_config(const std::string& path) {
  const nlohmann::json j = read_config_json(path);
  try {
    return run_config_from_json(j);
  } catch (const std::exception& e) {
    throw std::runtime_error("config file '" + path + "': " + e.what());
  }
}

nlohmann::json to_json(const RunConfig& c) {
  nlohmann::json j = {{"model", to_json(c.model)}, {"train", to_json(c.train)}, {"data", data::to_json(c.data)},
                      {"parties", data::to_json(c.parties)}, {"collab", to_json(c.collab)}, {"fed", to_json(c.fed)}};
  if (c.privacy.enabled) j["privacy"] = to_json(c.privacy);
  if (c.audit.enabled) j["audit"] = to_json(c.audit);
  return j;
}

}  // namespace pcmoe
