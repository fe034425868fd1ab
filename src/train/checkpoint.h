// Checkpoints: DIR/model.safetensors (parameters, and AdamW state under "adam_m." / "adam_v.")
// plus DIR/config.json (the run config) and DIR/tokenizer.model. A checkpoint is written beside
// the old one and swapped in by renames, so a crash mid-write never loses the last good one.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/params.h"
#include "train/adamw.h"
#include "train/train_config.h"

namespace pcmoe {

// `config`: the whole run config as JSON (to_json of collab/run_config.h's RunConfig), written
// as DIR/config.json.
void save_checkpoint(const std::string& dir, const nlohmann::json& config, const ParamSet& params,
                     const AdamW* opt, int64_t step, const std::string& tokenizer_model);

// The checkpoint directory to read: `dir`, or its ".old" twin if a swap was interrupted.
std::string resolve_checkpoint(const std::string& dir);
// The model section of a checkpoint's config, read with the other sections train/ knows (the whole
// run config: read_checkpoint_config, collab/run_config.h).
ModelConfig read_checkpoint_model(const std::string& dir);
// Loads parameters (and optimizer state if opt is given). Throws std::runtime_error if the
// checkpoint is corrupt or was made with a different model config than `cfg`. Returns the step.
int64_t load_checkpoint(const std::string& dir, const ModelConfig& cfg, ParamSet& params, AdamW* opt);

}  // namespace pcmoe
