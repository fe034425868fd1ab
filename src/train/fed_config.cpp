#include "train/fed_config.h"

#include <algorithm>
#include <stdexcept>

#include "common/json_fields.h"

namespace pcmoe {

FedConfig fed_config_from_json(const nlohmann::json& j) {
  FedConfig c;
  JsonFields f(j, "fed");
  f.read("local_steps", c.local_steps);
  f.read("block_size", c.block_size);
  f.read("latent_ratio", c.latent_ratio);
  f.read("ae_lr", c.ae_lr);
  f.read("ae_batch", c.ae_batch);
  f.read("tgap_steps", c.tgap_steps);
  f.read("tgap_blocks", c.tgap_blocks);
  f.read("tgap_epochs", c.tgap_epochs);
  f.read("faf_steps", c.faf_steps);
  f.read("public_categories", c.public_categories);
  f.read("autoencoder", c.autoencoder);
  f.read("lora_rank", c.lora.rank);
  f.read("lora_alpha", c.lora.alpha);
  f.read("lora_targets", c.lora.targets);
  f.read("server_optimizer", c.server_optimizer);
  f.read("server_lr", c.server_lr);
  f.read("server_beta1", c.server_beta1);
  f.read("server_beta2", c.server_beta2);
  f.read("server_tau", c.server_tau);
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

nlohmann::json to_json(const FedConfig& c) {
  return {{"local_steps", c.local_steps}, {"block_size", c.block_size}, {"latent_ratio", c.latent_ratio},
          {"ae_lr", c.ae_lr},             {"ae_batch", c.ae_batch},     {"tgap_steps", c.tgap_steps},
          {"tgap_blocks", c.tgap_blocks}, {"tgap_epochs", c.tgap_epochs}, {"faf_steps", c.faf_steps},
          {"public_categories", c.public_categories}, {"autoencoder", c.autoencoder},
          {"lora_rank", c.lora.rank}, {"lora_alpha", c.lora.alpha}, {"lora_targets", c.lora.targets},
          {"server_optimizer", c.server_optimizer}, {"server_lr", c.server_lr}, {"server_beta1", c.server_beta1},
          {"server_beta2", c.server_beta2}, {"server_tau", c.server_tau}};
}

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
