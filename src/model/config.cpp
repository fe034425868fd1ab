#include "model/config.h"

#include <stdexcept>
#include <string>

#include "common/json_fields.h"

namespace pcmoe {
namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("invalid model config: " + what);
}
}  // namespace

void ModelConfig::validate() const {
  require(vocab_size >= 4, "vocab_size must be >= 4");
  require(d_model > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0, "d_model, n_layers, n_heads and n_kv_heads must be positive");
  require(d_model % n_heads == 0, "d_model must be divisible by n_heads");
  require(head_dim() <= 512, "head size d_model/n_heads must be <= 512");
  require(head_dim() % 2 == 0, "head size d_model/n_heads must be even (RoPE rotates pairs)");
  require(n_heads % n_kv_heads == 0, "n_heads must be divisible by n_kv_heads");
  require(d_ff > 0 && d_ff_dense > 0, "d_ff and d_ff_dense must be positive");
  require(n_experts >= 1, "n_experts must be >= 1");
  require(n_experts <= 1024, "n_experts must be <= 1024");
  require(top_k >= 1 && top_k <= n_experts && top_k <= 64, "top_k must be in [1, min(n_experts, 64)]");
  require(moe_every >= 1 && moe_every <= n_layers, "moe_every must be in [1, n_layers]");
  require(seq_len >= 2, "seq_len must be >= 2");
  require(rope_theta > 0 && norm_eps > 0, "rope_theta and norm_eps must be positive");
  require(aux_loss_weight >= 0 && z_loss_weight >= 0, "loss weights must be >= 0");
}

namespace {

// The section's keys, each declared once (common/json_fields.h); compute_dtype, a name in JSON
// and a Dtype here, is read and written beside them.
const auto model_fields = [](auto& c, auto&& field) {
  field("vocab_size", c.vocab_size);
  field("d_model", c.d_model);
  field("n_layers", c.n_layers);
  field("n_heads", c.n_heads);
  field("n_kv_heads", c.n_kv_heads);
  field("d_ff", c.d_ff);
  field("d_ff_dense", c.d_ff_dense);
  field("n_experts", c.n_experts);
  field("top_k", c.top_k);
  field("moe_every", c.moe_every);
  field("seq_len", c.seq_len);
  field("renormalize", c.renormalize);
  field("tie_embeddings", c.tie_embeddings);
  field("qk_norm", c.qk_norm);
  field("rope_theta", c.rope_theta);
  field("norm_eps", c.norm_eps);
  field("aux_loss_weight", c.aux_loss_weight);
  field("z_loss_weight", c.z_loss_weight);
};

}  // namespace

ModelConfig model_config_from_json(const nlohmann::json& j) {
  ModelConfig c;
  JsonFields f(j, "model");
  read_fields(f, c, model_fields);
  std::string compute = to_string(c.compute_dtype);
  f.read("compute_dtype", compute);
  c.compute_dtype = parse_dtype(compute, "model.compute_dtype");
  if (c.compute_dtype == Dtype::kF16)
    throw std::runtime_error("config key 'model.compute_dtype': fp16 is not a compute dtype (its range overflows on "
                             "activations and gradients without loss scaling); use fp32 or bf16");
  f.reject_unknown();
  c.validate();
  return c;
}

nlohmann::json to_json(const ModelConfig& c) {
  nlohmann::json j = fields_to_json(c, model_fields);
  j["compute_dtype"] = to_string(c.compute_dtype);
  return j;
}

nlohmann::json architecture_json(const ModelConfig& c) {
  nlohmann::json j = to_json(c);
  j.erase("compute_dtype");
  return j;
}

}  // namespace pcmoe
