// The "train" section of a run config, and the sections train/ reads (model, train, data, privacy).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "data/data.h"
#include "model/config.h"
#include "privacy/privacy_config.h"

namespace pcmoe {

struct TrainConfig {
  int batch_size = 16;     // sequences per micro-batch
  int grad_accum = 1;      // micro-batches per optimizer step
  int steps = 600;         // optimizer steps (also the cosine schedule's horizon)
  float lr = 3e-3f;
  float min_lr = 3e-4f;
  int warmup = 50;
  float weight_decay = 0.1f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float grad_clip = 1.0f;  // global L2 norm; 0 disables clipping
  uint64_t seed = 1;       // initialisation and batch sampling
  int threads = 2;         // fixed thread count: results are bitwise reproducible at a given count
  int eval_every = 100;    // steps between validation evaluations (0: only at the end)
  int eval_windows = 64;   // validation windows of seq_len tokens per evaluation
  int log_every = 10;      // steps between metrics.jsonl lines
  int checkpoint_every = 0;  // steps between checkpoints (0: only at the end)
  void validate() const;
};
TrainConfig train_config_from_json(const nlohmann::json& j);
nlohmann::json to_json(const TrainConfig& c);

// The sections of a run config that train/ reads (the training loop, its data, checkpoints). The
// whole run config (RunConfig, collab/run_config.h) adds the sections of the layers above.
struct TrainRunConfig {
  ModelConfig model;
  TrainConfig train;
  data::DataConfig data;
  PrivacyConfig privacy;
};
// Throws unless `j`, a run config, is a JSON object.
void require_config_object(const nlohmann::json& j);
// Reads the model, train and data sections of run config `j` (an object; a missing section:
// its defaults) into `c`. Keys of other sections are left to their readers.
void read_train_sections(const nlohmann::json& j, TrainRunConfig& c);
// Reads j's privacy section, if any, into c.privacy, and checks it against c.train.
void read_privacy_section(const nlohmann::json& j, TrainRunConfig& c);
// The JSON of a config file: clear errors for a missing file and bad JSON.
nlohmann::json read_config_json(const std::string& path);
// `parse` (JSON -> config) of the config file at `path`, its errors prefixed with the file's name.
template <class Parse>
auto parse_config_file(const std::string& path, const Parse& parse) {
  const nlohmann::json j = read_config_json(path);
  try {
    return parse(j);
  } catch (const std::exception& e) {
    throw std::runtime_error("config file '" + path + "': " + e.what());
  }
}
// Tokens one optimizer step trains: grad_accum micro-batches of batch_size sequences of seq_len.
int64_t tokens_per_step(const TrainRunConfig& cfg);

}  // namespace pcmoe
