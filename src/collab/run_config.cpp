#include "collab/run_config.h"

#include <filesystem>
#include <stdexcept>

#include "collab/expert_wire.h"
#include "train/checkpoint.h"

namespace pcmoe {

// Each section is read by its own folder's reader; privacy comes last, its checks involving the
// train and collab sections.
RunConfig run_config_from_json(const nlohmann::json& j) {
  require_config_object(j);
  for (auto& [key, value] : j.items())
    if (key != "model" && key != "train" && key != "data" && key != "parties" && key != "collab" && key != "fed" &&
        key != "privacy" && key != "audit")
      throw std::runtime_error("unknown config section '" + key +
                               "' (expected model, train, data, parties, collab, fed, privacy, audit)");
  RunConfig c;
  static const nlohmann::json empty = nlohmann::json::object();
  read_train_sections(j, c);
  c.parties = data::party_split_config_from_json(j.contains("parties") ? j["parties"] : empty);
  c.collab = collab_config_from_json(j.contains("collab") ? j["collab"] : empty);
  if (!c.collab.init_from.empty() && !c.data.tokenizer.empty())
    throw std::runtime_error("config keys 'collab.init_from' and 'data.tokenizer' both name a tokenizer (the "
                             "checkpoint brings its own): drop data.tokenizer");
  c.fed = fed_config_from_json(j.contains("fed") ? j["fed"] : empty);
  check_fed_config(c.fed, c.model, c.train.steps, c.collab.modes);
  if (j.contains("audit")) c.audit = audit_config_from_json(j["audit"], c.parties.n_parties);
  read_privacy_section(j, c);
  if (c.privacy.enabled && c.collab.wire_dtype != "fp32")
    throw std::runtime_error("collab.wire_dtype must be fp32 with a privacy section: the per-unit clipping of "
                             "DP-SGD is computed and tested on fp32 expert calls only");
  parse_wire_dtype(c.collab.wire_dtype);  // one of the wire's dtypes (collab/expert_wire.h)
  return c;
}

RunConfig load_run_config(const std::string& path) { return parse_config_file(path, run_config_from_json); }

nlohmann::json to_json(const RunConfig& c) {
  nlohmann::json j = {{"model", to_json(c.model)}, {"train", to_json(c.train)}, {"data", data::to_json(c.data)},
                      {"parties", data::to_json(c.parties)}, {"collab", to_json(c.collab)}, {"fed", to_json(c.fed)}};
  if (c.privacy.enabled) j["privacy"] = to_json(c.privacy);
  if (c.audit.enabled) j["audit"] = to_json(c.audit);
  return j;
}

RunConfig default_run_config(const ModelConfig& model) {
  RunConfig c;
  c.model = model;
  c.data.vocab_size = model.vocab_size;
  return c;
}

RunConfig read_checkpoint_config(const std::string& dir) {
  return load_run_config((std::filesystem::path(resolve_checkpoint(dir)) / "config.json").string());
}

}  // namespace pcmoe
