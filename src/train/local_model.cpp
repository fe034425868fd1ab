#include "train/local_model.h"

namespace pcmoe {

LocalModel::LocalModel(const ModelConfig& m, const TrainConfig& t)
    : params(m, ParamSelection{}), experts(m, params, t.batch_size * m.seq_len * m.top_k),
      model(m, params, experts, t.batch_size), opt(params, t) {
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
