#include "train/local_model.h"

namespace pcmoe {

LocalModel::LocalModel(const ModelConfig& m, const TrainConfig& t, int max_batch, bool per_unit)
    : params(m, ParamSelection{}),
      experts(m, params, (max_batch > 0 ? max_batch : t.batch_size) * m.seq_len * m.top_k, per_unit),
      model(m, params, experts, max_batch > 0 ? max_batch : t.batch_size, per_unit), opt(params, t) {
  params.init(t.seed);
}

nlohmann::json LocalModel::memory() const {
  const size_t p = params.numel() * sizeof(float), acts = model.activation_bytes() + experts.activation_bytes();
  return {{"parameters", p},           {"gradients", p},
          {"optimizer", opt.state_bytes()}, {"activations", acts},
          {"scratch", model.scratch_bytes()}, {"transport", 0},
          {"total", 2 * p + opt.state_bytes() + acts + model.scratch_bytes()}};
}

}  // namespace pcmoe
