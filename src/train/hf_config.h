// Hugging Face Mixtral and OLMoE checkpoints as pcmoe models: config.json keys to and from a
// ModelConfig, and pcmoe's tensor names to theirs. A key whose value the engine cannot run is
// refused by name; nothing is silently ignored but bookkeeping keys (dtype, versions, token ids).
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "model/config.h"

namespace pcmoe {

enum class HfArch { kMixtral, kOlmoe };

struct HfModel {
  HfArch arch = HfArch::kMixtral;
  ModelConfig model;
};

// seq_len: the imported model's training length; 0: max_position_embeddings, at most 4096.
// Throws one line naming the file and the key.
HfModel hf_model_from_json(const nlohmann::json& config, const std::string& where, int seq_len);

struct HfExportInfo {
  int max_position = 0;        // 0: the model's seq_len
  int bos_id = -1, eos_id = -1;  // -1: not written
  bool bf16 = false;           // torch_dtype
};
// The architecture a ModelConfig exports as: OLMoE with q/k norms, Mixtral otherwise; throws
// naming the key when neither runs it.
HfArch hf_arch_for(const ModelConfig& m);
nlohmann::json hf_config_json(const ModelConfig& m, const HfExportInfo& info);

// "layers.3.experts.5.w1" -> "model.layers.3.block_sparse_moe.experts.5.w1.weight" (Mixtral)
std::string hf_tensor_name(HfArch arch, const std::string& pcmoe_name);

}  // namespace pcmoe
