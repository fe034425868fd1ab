// Hugging Face checkpoints in and out (Mixtral, OLMoE; docs/hf.md): a directory with config.json,
// model.safetensors or shards named by model.safetensors.index.json, and tokenizer.model.
// Everything is read tensor by tensor (st_stream.h), so a party loads its backbone and its own
// experts and never the whole checkpoint; outputs appear by rename only when complete.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/params.h"
#include "tensor/safetensors.h"
#include "tensor/st_stream.h"
#include "train/hf_config.h"

namespace pcmoe {

// A directory in the Hugging Face layout (its config.json names an architecture).
bool is_hf_dir(const std::string& dir);

class HfSource {
 public:
  // Reads config.json, the index (or model.safetensors) and every shard's header; refuses a
  // missing shard and an index naming a tensor its shard does not hold.
  HfSource(const std::string& dir, int seq_len);
  const HfModel& model() const { return model_; }
  // Throws naming the Hugging Face tensor if it is absent, of another shape or of a dtype the
  // reader does not convert.
  void check(const ParamTensor& t) const;
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out);
  uint64_t bytes_read() const;
  uint64_t checkpoint_bytes() const { return checkpoint_bytes_; }  // every shard file, whole

 private:
  StReader& shard_of(const std::string& hf_name) const;
  std::string dir_;
  HfModel model_;
  std::map<std::string, std::unique_ptr<StReader>> shards_;  // by file name
  std::map<std::string, StReader*> tensor_shard_;             // Hugging Face name -> shard
  uint64_t checkpoint_bytes_ = 0;
};

// Initial weights for a run (collab.init_from, train --init-from): a pcmoe checkpoint or a
// Hugging Face directory whose architecture (every model key but seq_len and the loss weights)
// is the run's.
class InitSource {
 public:
  InitSource(const std::string& path, const ModelConfig& run_model);
  void read(const std::string& name, const std::vector<int64_t>& shape, float* out);
  void load(ParamSet& params);  // every tensor `params` holds
  // The SentencePiece model that comes with the weights; throws when there is none.
  std::string tokenizer_file() const;

 private:
  std::string path_, where_;
  std::unique_ptr<HfSource> hf_;
  std::unique_ptr<StFile> pcmoe_;
};
std::string init_tokenizer_file(const std::string& path);

struct HfImportOptions {
  int seq_len = 0;            // 0: max_position_embeddings, at most 4096
  ParamSelection selection;   // what to import (a party: its backbone and its own experts)
  std::string tokenizer;      // a SentencePiece model to use instead of DIR/tokenizer.model
};
struct HfImportResult {
  HfModel model;
  size_t tensors = 0;
  uint64_t checkpoint_bytes = 0, bytes_read = 0;
  bool has_tokenizer = false;
};
// The run config, as JSON, that a checkpoint of the imported `model` records: the caller's, as
// train/ knows only its own sections (collab/run_config.h's default_run_config).
using ImportedConfig = std::function<nlohmann::json(const ModelConfig& model)>;
// Writes a pcmoe checkpoint (fp32, no optimizer state) at out_dir, which must not exist.
HfImportResult import_hf(const std::string& hf_dir, const std::string& out_dir, const HfImportOptions& opts,
                         const ImportedConfig& config_of);

struct HfExportOptions {
  bool bf16 = false;
  uint64_t max_shard_bytes = 5000000000;  // larger: sharded, with model.safetensors.index.json
  int max_position = 0;                   // 0: the model's seq_len
};
// Writes hf_dir (which must not exist) from a pcmoe checkpoint's weights; returns the shards.
int export_hf(const std::string& ckpt_dir, const std::string& hf_dir, const HfExportOptions& opts);

}  // namespace pcmoe
