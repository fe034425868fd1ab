#include "train/hf_config.h"

#include <charconv>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace pcmoe {
namespace {

struct Keys {
  const nlohmann::json& j;
  std::string where;
  [[noreturn]] void refuse(const std::string& key, const std::string& why) const {
    throw std::runtime_error(where + ": key '" + key + "' " + why);
  }
  const nlohmann::json& need(const std::string& key) const {
    if (!j.contains(key)) refuse(key, "is missing");
    return j[key];
  }
  int integer(const std::string& key) const {
    const nlohmann::json& v = need(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (1 << 30))
      refuse(key, "must be a positive integer, not " + v.dump());
    return v.get<int>();
  }
  float number(const std::string& key, float fallback) const {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_number()) refuse(key, "must be a number, not " + j[key].dump());
    return j[key].get<float>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_boolean()) refuse(key, "must be true or false, not " + j[key].dump());
    return j[key].get<bool>();
  }
  // A feature the engine lacks: the key may only hold the value that switches it off.
  void only(const std::string& key, const nlohmann::json& allowed, const std::string& why) const {
    if (j.contains(key) && j[key] != allowed) refuse(key, "is " + j[key].dump() + ": " + why);
  }
};

// The shortest decimal that reads back as the same float: JSON keeps 1e-05, not 9.99999974e-06,
// so exports are stable across export -> import -> export.
double json_float(float f) {
  char buf[32];
  auto res = std::to_chars(buf, buf + sizeof buf, f);
  *res.ptr = '\0';
  return std::strtod(buf, nullptr);
}

}  // namespace

HfModel hf_model_from_json(const nlohmann::json& j, const std::string& where, int seq_len) {
  if (!j.is_object()) throw std::runtime_error(where + ": not a JSON object");
  const Keys k{j, where};
  const nlohmann::json& archs = k.need("architectures");
  if (!archs.is_array() || archs.size() != 1 || !archs[0].is_string())
    k.refuse("architectures", "must name one architecture, not " + archs.dump());
  const std::string arch = archs[0].get<std::string>();
  HfModel out;
  if (arch == "MixtralForCausalLM") out.arch = HfArch::kMixtral;
  else if (arch == "OlmoeForCausalLM") out.arch = HfArch::kOlmoe;
  else k.refuse("architectures", "names '" + arch + "': pcmoe imports MixtralForCausalLM and OlmoeForCausalLM");
  const bool olmoe = out.arch == HfArch::kOlmoe;
  static const std::set<std::string> known = {
      "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "head_dim", "num_local_experts", "num_experts",
      "num_experts_per_tok", "rms_norm_eps", "rope_theta", "rope_scaling", "router_aux_loss_coef",
      "tie_word_embeddings", "max_position_embeddings", "hidden_act", "attention_dropout", "sliding_window",
      "router_jitter_noise", "attention_bias", "clip_qkv", "norm_topk_prob", "torch_dtype",
      "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache",
      "output_router_logits"};
  for (auto& [key, value] : j.items())
    if (!known.count(key) && key.rfind('_', 0) != 0)
      k.refuse(key, "is not one pcmoe knows; refused rather than ignored (it may name a feature the engine lacks)");
  const std::string type = olmoe ? "olmoe" : "mixtral";
  if (j.contains("model_type") && j["model_type"] != type) k.refuse("model_type", "is " + j["model_type"].dump() + " for " + arch);
  k.only("hidden_act", "silu", "pcmoe's experts are SwiGLU (silu)");
  k.only("rope_scaling", nullptr, "pcmoe has plain RoPE only");
  k.only("attention_dropout", 0.0, "pcmoe trains without dropout");
  k.only("router_jitter_noise", 0.0, "pcmoe's router has no jitter");
  k.only("attention_bias", false, "pcmoe's projections have no bias");
  k.only("clip_qkv", nullptr, "pcmoe does not clip q, k and v");
  if (!olmoe && j.contains("norm_topk_prob")) k.refuse("norm_topk_prob", "is an OLMoE key (Mixtral always renormalises)");

  ModelConfig& m = out.model;
  m.vocab_size = k.integer("vocab_size");
  m.d_model = k.integer("hidden_size");
  m.d_ff = k.integer("intermediate_size");
  m.d_ff_dense = m.d_ff;  // every layer is MoE (moe_every 1): unused
  m.n_layers = k.integer("num_hidden_layers");
  m.n_heads = k.integer("num_attention_heads");
  m.n_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null() ? k.integer("num_key_value_heads") : m.n_heads;
  if (j.contains("head_dim") && !j["head_dim"].is_null() && (m.d_model % m.n_heads != 0 || k.integer("head_dim") != m.d_model / m.n_heads))
    k.refuse("head_dim", "is " + j["head_dim"].dump() + ": pcmoe's head size is hidden_size / num_attention_heads");
  m.n_experts = k.integer(olmoe ? "num_experts" : "num_local_experts");
  m.top_k = k.integer("num_experts_per_tok");
  m.moe_every = 1;
  m.renormalize = olmoe ? k.boolean("norm_topk_prob", false) : true;
  m.qk_norm = olmoe;
  m.tie_embeddings = k.boolean("tie_word_embeddings", false);
  m.rope_theta = k.number("rope_theta", 10000.0f);
  m.norm_eps = k.number("rms_norm_eps", 1e-5f);
  m.aux_loss_weight = k.number("router_aux_loss_coef", olmoe ? 0.01f : 0.001f);
  m.z_loss_weight = 0;  // neither architecture's loss has a router z-loss
  const int max_position = j.contains("max_position_embeddings") ? k.integer("max_position_embeddings") : 4096;
  m.seq_len = seq_len > 0 ? seq_len : std::min(max_position, 4096);
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() &&
      (!j["sliding_window"].is_number_integer() || j["sliding_window"].get<int64_t>() < m.seq_len))
    k.refuse("sliding_window", "is " + j["sliding_window"].dump() + ", shorter than the sequence length " +
                                   std::to_string(m.seq_len) + ": pcmoe's attention is full causal");
  try {
    m.validate();
  } catch (const std::exception& e) {
    throw std::runtime_error(where + ": " + e.what());
  }
  return out;
}

HfArch hf_arch_for(const ModelConfig& m) {
  if (m.moe_every != 1)
    throw std::runtime_error("model.moe_every is " + std::to_string(m.moe_every) +
                             ": Mixtral and OLMoE have an MoE block in every layer");
  if (m.qk_norm) return HfArch::kOlmoe;
  if (!m.renormalize)
    throw std::runtime_error("model.renormalize is false without model.qk_norm: Mixtral always renormalises the "
                             "top-k gates, and OLMoE (which may not) has q/k norms");
  return HfArch::kMixtral;
}

nlohmann::json hf_config_json(const ModelConfig& m, const HfExportInfo& info) {
  const bool olmoe = hf_arch_for(m) == HfArch::kOlmoe;
  nlohmann::json j = {
      {"architectures", {olmoe ? "OlmoeForCausalLM" : "MixtralForCausalLM"}},
      {"model_type", olmoe ? "olmoe" : "mixtral"},
      {"vocab_size", m.vocab_size},
      {"hidden_size", m.d_model},
      {"intermediate_size", m.d_ff},
      {"num_hidden_layers", m.n_layers},
      {"num_attention_heads", m.n_heads},
      {"num_key_value_heads", m.n_kv_heads},
      {olmoe ? "num_experts" : "num_local_experts", m.n_experts},
      {"num_experts_per_tok", m.top_k},
      {"rms_norm_eps", json_float(m.norm_eps)},
      {"rope_theta", json_float(m.rope_theta)},
      {"router_aux_loss_coef", json_float(m.aux_loss_weight)},
      {"tie_word_embeddings", m.tie_embeddings},
      {"max_position_embeddings", info.max_position > 0 ? info.max_position : m.seq_len},
      {"hidden_act", "silu"},
      {"attention_dropout", 0.0},
      {"initializer_range", 0.02},
      {"output_router_logits", false},
      {"use_cache", true},
      {"torch_dtype", info.bf16 ? "bfloat16" : "float32"}};
  if (olmoe) {
    j["norm_topk_prob"] = m.renormalize;
    j["attention_bias"] = false;
    j["clip_qkv"] = nullptr;
    j["rope_scaling"] = nullptr;
  } else {
    j["sliding_window"] = nullptr;
  }
  if (info.bos_id >= 0) j["bos_token_id"] = info.bos_id;
  if (info.eos_id >= 0) j["eos_token_id"] = info.eos_id;
  return j;
}

std::string hf_tensor_name(HfArch arch, const std::string& name) {
  if (name == "wte") return "model.embed_tokens.weight";
  if (name == "final_norm") return "model.norm.weight";
  if (name == "head") return "lm_head.weight";
  const bool olmoe = arch == HfArch::kOlmoe;
  // layers.<l>.<rest>
  const size_t dot = name.find('.', 7);
  if (name.rfind("layers.", 0) != 0 || dot == std::string::npos)
    throw std::logic_error("no Hugging Face name for tensor '" + name + "'");
  const std::string layer = "model." + name.substr(0, dot) + ".", rest = name.substr(dot + 1);
  static const std::map<std::string, std::string> attn = {
      {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"}, {"wq", "self_attn.q_proj"},
      {"wk", "self_attn.k_proj"}, {"wv", "self_attn.v_proj"}, {"wo", "self_attn.o_proj"},
      {"q_norm", "self_attn.q_norm"}, {"k_norm", "self_attn.k_norm"}};
  if (auto it = attn.find(rest); it != attn.end()) return layer + it->second + ".weight";
  const std::string moe = olmoe ? "mlp." : "block_sparse_moe.";
  if (rest == "router") return layer + moe + "gate.weight";
  if (rest.rfind("experts.", 0) == 0) {
    const size_t w = rest.rfind('.');
    const std::string which = rest.substr(w + 1), expert = rest.substr(0, w);
    const std::string hf = olmoe ? (which == "w1" ? "gate_proj" : which == "w3" ? "up_proj" : "down_proj") : which;
    return layer + moe + expert + "." + hf + ".weight";
  }
  throw std::logic_error("no Hugging Face name for tensor '" + name + "'");
}

}  // namespace pcmoe
