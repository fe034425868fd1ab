#include "train/hf_checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace pcmoe {
namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open '" + path.string() + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const std::exception& e) {
    throw std::runtime_error("'" + path.string() + "' is not valid JSON: " + e.what());
  }
}

// A shard named by the index must be a plain file name in the directory.
bool plain_file_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos && name != "." && name != "..";
}

// Every model key but those a run may choose for itself: the training length, the losses and
// the compute dtype (and the dense FFN size, which has no tensor when every layer is MoE).
nlohmann::json architecture(const ModelConfig& m) {
  nlohmann::json j = architecture_json(m);
  for (const char* key : {"seq_len", "aux_loss_weight", "z_loss_weight"}) j.erase(key);
  if (m.moe_every == 1) j.erase("d_ff_dense");
  return j;
}

}  // namespace

bool is_hf_dir(const std::string& dir) {
  const fs::path config = fs::path(dir) / "config.json";
  if (!fs::is_regular_file(config)) return false;
  try {
    return read_json(config).contains("architectures");
  } catch (const std::exception&) {
    return false;
  }
}

HfSource::HfSource(const std::string& dir, int seq_len) : dir_(dir) {
  const fs::path root(dir);
  model_ = hf_model_from_json(read_json(root / "config.json"), (root / "config.json").string(), seq_len);
  const fs::path index_path = root / "model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;  // tensor -> shard file
  if (fs::exists(index_path)) {
    const nlohmann::json index = read_json(index_path);
    const std::string where = index_path.string();
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      throw std::runtime_error(where + ": no 'weight_map' object");
    for (auto& [tensor, file] : index["weight_map"].items()) {
      if (!file.is_string() || !plain_file_name(file.get<std::string>()))
        throw std::runtime_error(where + ": tensor '" + tensor + "' is mapped to " + file.dump() + ", not a file in " + dir);
      weight_map[tensor] = file.get<std::string>();
    }
  } else if (fs::exists(root / "model.safetensors")) {
    shards_["model.safetensors"] = std::make_unique<StReader>((root / "model.safetensors").string());
    for (const auto& [tensor, entry] : shards_["model.safetensors"]->entries()) weight_map[tensor] = "model.safetensors";
  } else {
    throw std::runtime_error(dir + " has neither model.safetensors nor model.safetensors.index.json");
  }
  for (const auto& [tensor, file] : weight_map) {
    auto it = shards_.find(file);
    if (it == shards_.end()) {
      if (!fs::exists(root / file))
        throw std::runtime_error(index_path.string() + " names shard '" + file + "', which is missing");
      it = shards_.emplace(file, std::make_unique<StReader>((root / file).string())).first;
    }
    if (!it->second->has(tensor))
      throw std::runtime_error(index_path.string() + " puts tensor '" + tensor + "' in '" + file + "', which does not hold it");
    tensor_shard_[tensor] = it->second.get();
  }
  for (const auto& [file, reader] : shards_) checkpoint_bytes_ += fs::file_size(root / file);
}

StReader& HfSource::shard_of(const std::string& hf_name) const {
  auto it = tensor_shard_.find(hf_name);
  if (it == tensor_shard_.end())
    throw std::runtime_error(dir_ + ": the checkpoint has no tensor '" + hf_name + "'");
  return *it->second;
}

void HfSource::check(const ParamTensor& t) const {
  const std::string hf = hf_tensor_name(model_.arch, t.name);
  shard_of(hf).check(hf, t.shape);
}

void HfSource::read(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  const std::string hf = hf_tensor_name(model_.arch, name);
  shard_of(hf).read_f32(hf, shape, out);
}

uint64_t HfSource::bytes_read() const {
  uint64_t total = 0;
  for (const auto& [file, reader] : shards_) total += reader->bytes_read();
  return total;
}

InitSource::InitSource(const std::string& path, const ModelConfig& run_model) : path_(path) {
  ModelConfig saved;
  if (is_hf_dir(path)) {
    hf_ = std::make_unique<HfSource>(path, run_model.seq_len);
    saved = hf_->model().model;
    where_ = path;
  } else {
    where_ = resolve_checkpoint(path);
    saved = read_checkpoint_model(where_);
  }
  const nlohmann::json a = architecture(saved), b = architecture(run_model);
  if (a != b) {
    std::string diff;
    for (auto& [key, value] : b.items())
      if (a.value(key, nlohmann::json()) != value)
        diff += " model." + key + " is " + a.value(key, nlohmann::json()).dump() + " there, " + value.dump() + " in the config;";
    throw std::runtime_error("initial weights '" + where_ + "' are of another model than the config's:" + diff);
  }
  if (!hf_) pcmoe_ = std::make_unique<StFile>(read_safetensors((fs::path(where_) / "model.safetensors").string()));
}

void InitSource::read(const std::string& name, const std::vector<int64_t>& shape, float* out) {
  if (hf_) return hf_->read(name, shape, out);
  try {
    const StTensor& t = pcmoe_->get(name, shape);
    std::copy_n(t.f32(), t.numel(), out);
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + where_ + "': " + e.what());
  }
}

void InitSource::load(ParamSet& params) {
  for (const ParamTensor& t : params.tensors()) read(t.name, t.shape, params.value(t.name));
}

std::string InitSource::tokenizer_file() const { return init_tokenizer_file(path_); }

std::string init_tokenizer_file(const std::string& path) {
  const fs::path dir = is_hf_dir(path) ? fs::path(path) : fs::path(resolve_checkpoint(path));
  const fs::path file = dir / "tokenizer.model";
  if (!fs::exists(file)) {
    const std::string why = fs::exists(dir / "tokenizer.json")
                                ? " (only tokenizer.json, a byte-level BPE pcmoe does not read: import it with --tokenizer FILE.model)"
                                : "";
    throw std::runtime_error("initial weights '" + dir.string() + "' come without a SentencePiece tokenizer.model" + why);
  }
  return file.string();
}

}  // namespace pcmoe
