#include "eval/loaded_model.h"

#include "tensor/gemm.h"
#include "train/checkpoint.h"

namespace pcmoe {

LoadedModel::LoadedModel(const std::string& dir, int max_batch)
    : cfg(read_checkpoint_config(dir)), params(cfg.model, ParamSelection{}),
      experts(cfg.model, params, max_batch * cfg.model.seq_len * cfg.model.top_k),
      model(cfg.model, params, experts, max_batch) {
  set_num_threads(cfg.train.threads);
  load_checkpoint(dir, cfg.model, params, nullptr);
}

}  // namespace pcmoe
