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

int64_t tokens_per_step(const TrainRunConfig& cfg) {
  return (int64_t)cfg.train.grad_accum * cfg.train.batch_size * cfg.model.seq_len;
}

void require_config_object(const nlohmann::json& j) {
  if (!j.is_object()) throw std::runtime_error("config must be a JSON object with sections model, train, data, parties, collab, privacy");
}

void read_train_sections(const nlohmann::json& j, TrainRunConfig& c) {
  static const nlohmann::json empty = nlohmann::json::object();
  c.model = model_config_from_json(j.contains("model") ? j["model"] : empty);
  c.train = train_config_from_json(j.contains("train") ? j["train"] : empty);
  c.data = data::data_config_from_json(j.contains("data") ? j["data"] : empty);
  c.data.vocab_size = c.model.vocab_size;
}

void read_privacy_section(const nlohmann::json& j, TrainRunConfig& c) {
  if (!j.contains("privacy")) return;
  c.privacy = privacy_config_from_json(j["privacy"]);
  if (c.train.grad_accum != 1)
    throw std::runtime_error("train.grad_accum must be 1 with a privacy section: DP-SGD batches are Poisson draws "
                             "of privacy.sampling_rate x units, not fixed accumulated batches");
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

}  // namespace pcmoe
