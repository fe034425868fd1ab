#include "fed/lora_model.h"

namespace pcmoe::fed {

LoraModel::LoraModel(const ModelConfig& m, const TrainConfig& t, const LoraSpec& spec)
    : base(m, ParamSelection{}, /*with_grads=*/false),
      experts(m, base, t.batch_size * m.seq_len * m.top_k),
      lora(m, spec, t.batch_size * m.seq_len * m.top_k),  // the most rows one map sees: an MoE layer's routed rows
      model(m, base, experts, t.batch_size),
      opt(lora.params(), t) {
  base.init(t.seed);
  lora.init(t.seed);
  model.set_lora(&lora);
  experts.set_lora(&lora);
}

nlohmann::json LoraModel::memory() const {
  const size_t adapters = lora.params().numel() * sizeof(float);
  const size_t params = base.numel() * sizeof(float) + adapters;
  const size_t acts = model.activation_bytes() + experts.activation_bytes();
  const size_t scratch = model.scratch_bytes() + lora.scratch_bytes();
  return {{"parameters", params},           {"gradients", adapters},
          {"optimizer", opt.state_bytes()}, {"activations", acts},
          {"scratch", scratch},             {"transport", 0},
          {"total", params + adapters + opt.state_bytes() + acts + scratch}};
}

}  // namespace pcmoe::fed
