// The whole run config: the sections train/ reads (train/train_config.h) and those of the layers
// above it, each read by its own folder's reader. Assembled here, in the lowest layer that sees
// every section; a deployment adds its deploy section (net/deploy.h's DeployRun).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "collab/collab_config.h"
#include "collab/fed_config.h"
#include "data/parties.h"
#include "train/train_config.h"

namespace pcmoe {

struct RunConfig : TrainRunConfig {
  data::PartySplitConfig parties;  // how documents are dealt to parties (pcmoe collab)
  CollabConfig collab;
  FedConfig fed;  // the federated baselines' settings
  AuditConfig audit;
};
// Reads and checks a config file: clear errors for a missing file, bad JSON, unknown keys.
RunConfig load_run_config(const std::string& path);
RunConfig run_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const RunConfig& c);
// The run config of `model` with every other section at its defaults (data.vocab_size follows the
// model, as in a config file): what a checkpoint imported from Hugging Face records.
RunConfig default_run_config(const ModelConfig& model);
// The run config of a checkpoint (`dir` as resolve_checkpoint finds it), read as load_run_config
// reads a config file.
RunConfig read_checkpoint_config(const std::string& dir);

}  // namespace pcmoe
