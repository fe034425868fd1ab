#include "train/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "tensor/safetensors.h"

namespace fs = std::filesystem;

namespace pcmoe {

void save_checkpoint(const std::string& dir, const nlohmann::json& config, const ParamSet& params,
                     const AdamW* opt, int64_t step, const std::string& tokenizer_model) {
  const fs::path final_dir(dir), tmp_dir(dir + ".tmp"), old_dir(dir + ".old");
  fs::remove_all(tmp_dir);
  fs::create_directories(tmp_dir);
  StFile file;
  file.metadata["format"] = "pcmoe-checkpoint-1";
  file.metadata["step"] = std::to_string(step);
  for (const ParamTensor& t : params.tensors()) {
    file.put_f32(t.name, t.shape, params.values() + t.offset);
    if (opt) {
      file.put_f32("adam_m." + t.name, t.shape, opt->m() + t.offset);
      file.put_f32("adam_v." + t.name, t.shape, opt->v() + t.offset);
    }
  }
  if (opt) file.metadata["adam_steps"] = std::to_string(opt->steps_done());
  write_safetensors((tmp_dir / "model.safetensors").string(), file);
  {
    std::ofstream out(tmp_dir / "config.json");
    out << config.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + (tmp_dir / "config.json").string());
  }
  if (!tokenizer_model.empty()) fs::copy_file(tokenizer_model, tmp_dir / "tokenizer.model");
  // Swap: the old checkpoint stays until the new one is complete and in place.
  fs::remove_all(old_dir);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(tmp_dir, final_dir);
  fs::remove_all(old_dir);
}

std::string resolve_checkpoint(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "model.safetensors")) return dir;
  if (fs::exists(fs::path(dir + ".old") / "model.safetensors")) return dir + ".old";
  throw std::runtime_error("no checkpoint at '" + dir + "' (expected " + dir + "/model.safetensors)");
}

ModelConfig read_checkpoint_model(const std::string& dir) {
  return parse_config_file((fs::path(resolve_checkpoint(dir)) / "config.json").string(), [](const nlohmann::json& j) {
    require_config_object(j);
    TrainRunConfig c;
    read_train_sections(j, c);
    read_privacy_section(j, c);
    return c.model;
  });
}

int64_t load_checkpoint(const std::string& dir, const ModelConfig& cfg, ParamSet& params, AdamW* opt) {
  const std::string where = resolve_checkpoint(dir);
  const ModelConfig saved = read_checkpoint_model(where);
  if (architecture_json(saved) != architecture_json(cfg)) {
    std::string diff;
    const nlohmann::json a = architecture_json(saved), b = architecture_json(cfg);
    for (auto& [key, value] : b.items())
      if (a[key] != value) diff += " model." + key + " is " + a[key].dump() + " in the checkpoint, " + value.dump() + " in the config;";
    throw std::runtime_error("checkpoint '" + where + "' does not match the config:" + diff);
  }
  const StFile file = read_safetensors((fs::path(where) / "model.safetensors").string());
  auto meta = [&](const char* key) -> int64_t {
    auto it = file.metadata.find(key);
    if (it == file.metadata.end()) throw std::runtime_error("checkpoint '" + where + "' has no '" + key + "' in its metadata");
    try {
      return std::stoll(it->second);
    } catch (const std::exception&) {
      throw std::runtime_error("checkpoint '" + where + "' has a malformed '" + key + "'");
    }
  };
  try {
    for (const ParamTensor& t : params.tensors()) {
      std::copy_n(file.get(t.name, t.shape).f32(), t.numel, params.values() + t.offset);
      if (opt) {
        std::copy_n(file.get("adam_m." + t.name, t.shape).f32(), t.numel, opt->m() + t.offset);
        std::copy_n(file.get("adam_v." + t.name, t.shape).f32(), t.numel, opt->v() + t.offset);
      }
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + where + "': " + e.what());
  }
  if (opt) opt->set_steps_done(meta("adam_steps"));
  return meta("step");
}

}  // namespace pcmoe
