#include "collab/fed_config.h"

#include <algorithm>
#include <stdexcept>

#include "common/json_fields.h"

namespace pcmoe {
namespace {

// The section's keys, each declared once (common/json_fields.h).
const auto fed_fields = [](auto& c, auto&& field) {
  field("local_steps", c.local_steps);
  field("block_size", c.block_size);
  field("latent_ratio", c.latent_ratio);
  field("ae_lr", c.ae_lr);
  field("ae_batch", c.ae_batch);
  field("tgap_steps", c.tgap_steps);
  field("tgap_blocks", c.tgap_blocks);
  field("tgap_epochs", c.tgap_epochs);
  field("faf_steps", c.faf_steps);
  field("public_categories", c.public_categories);
  field("autoencoder", c.autoencoder);
  field("lora_rank", c.lora.rank);
  field("lora_alpha", c.lora.alpha);
  field("lora_targets", c.lora.targets);
  field("server_optimizer", c.server_optimizer);
  field("server_lr", c.server_lr);
  field("server_beta1", c.server_beta1);
  field("server_beta2", c.server_beta2);
  field("server_tau", c.server_tau);
};

}  // namespace

FedConfig fed_config_from_json(const nlohmann::json& j) {
  FedConfig c;
  JsonFields f(j, "fed");
  read_fields(f, c, fed_fields);
  f.reject_unknown();
  auto require = [](bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("invalid fed config: ") + what);
  };
  require(c.local_steps >= 1, "local_steps must be >= 1");
  require(c.block_size >= 2 && c.block_size <= (1 << 20), "block_size must be in [2, 1048576]");
  require(c.latent_ratio >= 1, "latent_ratio must be >= 1");
  require(c.latent_ratio <= c.block_size,
          "latent_ratio leaves no latent: block_size / latent_ratio must be at least 1 float per block");
  require(c.block_size % c.latent_ratio == 0, "latent_ratio must divide block_size");
  require(c.ae_lr > 0 && c.ae_batch >= 1, "need ae_lr > 0 and ae_batch >= 1");
  require(c.tgap_steps >= 0 && c.tgap_blocks >= 1 && c.tgap_epochs >= 1 && c.faf_steps >= 0,
          "need tgap_steps >= 0, tgap_blocks >= 1, tgap_epochs >= 1, faf_steps >= 0");
  require(c.server_optimizer == "avg" || c.server_optimizer == "adam", "server_optimizer must be \"avg\" or \"adam\"");
  require(c.server_lr > 0 && c.server_beta1 >= 0 && c.server_beta1 < 1 && c.server_beta2 >= 0 && c.server_beta2 < 1 &&
              c.server_tau > 0,
          "need server_lr > 0, server_beta1 and server_beta2 in [0, 1), server_tau > 0");
  return c;
}

nlohmann::json to_json(const FedConfig& c) { return fields_to_json(c, fed_fields); }

const std::vector<FedMode>& fed_mode_table() {
  static const std::vector<FedMode> table = {
      {"fedavg", FedCodec::fp32, false},
      {"int8", FedCodec::int8, false},
      {"topk-ef", FedCodec::topk_ef, false},
      {"cg-fedllm", FedCodec::autoencoder, false},
      {"fedavg-lora", FedCodec::fp32, true},
  };
  return table;
}

const FedMode* find_fed_mode(const std::string& mode) {
  for (const FedMode& m : fed_mode_table())
    if (mode == m.name) return &m;
  return nullptr;
}

const FedMode& fed_mode(const std::string& mode) {
  if (const FedMode* m = find_fed_mode(mode)) return *m;
  throw std::runtime_error("unknown federated mode '" + mode + "' (expected " + fed_mode_names(" or ") + ")");
}

bool is_fed_mode(const std::string& mode) { return find_fed_mode(mode) != nullptr; }

std::string fed_mode_names(const std::string& last_separator) {
  const std::vector<FedMode>& table = fed_mode_table();
  std::string names;
  for (size_t i = 0; i < table.size(); ++i)
    names += (i == 0 ? "" : i + 1 == table.size() ? last_separator : ", ") + std::string(table[i].name);
  return names;
}

void check_fed_config(const FedConfig& c, const ModelConfig& model, int train_steps,
                      const std::vector<std::string>& modes) {
  if (std::none_of(modes.begin(), modes.end(), is_fed_mode)) return;
  if (train_steps % c.local_steps != 0)
    throw std::runtime_error("config key 'fed.local_steps' (" + std::to_string(c.local_steps) +
                             ") must divide train.steps (" + std::to_string(train_steps) +
                             "): every party trains the same tokens in every mode");
  const auto any_mode = [&modes](auto row_matches) {
    return std::any_of(modes.begin(), modes.end(), [&](const std::string& m) {
      const FedMode* row = find_fed_mode(m);
      return row && row_matches(*row);
    });
  };
  if (any_mode([](const FedMode& m) { return m.lora; })) {
    try {
      lora_layout(model, c.lora);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("invalid fed config (lora_rank, lora_alpha, lora_targets): ") + e.what());
    }
  }
  if (any_mode([](const FedMode& m) { return m.codec == FedCodec::autoencoder; }) && c.tgap_steps > 0 &&
      c.autoencoder.empty() && c.public_categories.empty())
    throw std::runtime_error("mode cg-fedllm pre-trains its autoencoder (TGAP) on public data: set "
                             "'fed.public_categories' to corpus categories no party holds, or 'fed.tgap_steps' to 0");
}

}  // namespace pcmoe
