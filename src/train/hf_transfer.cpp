// pcmoe import / export: Hugging Face directories to pcmoe checkpoints and back, one tensor in
// memory at a time, written beside the target and renamed into place only when complete.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "data/data.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"

namespace fs = std::filesystem;

namespace pcmoe {
namespace {

// A directory built under `final` + ".tmp" and renamed to `final` by commit(); removed if the
// work throws first, so a failed command leaves nothing behind.
class StagedDir {
 public:
  explicit StagedDir(const std::string& final) : final_(final), tmp_(final + ".tmp") {
    if (fs::exists(final_)) throw std::runtime_error(final_ + " exists: give another output directory (nothing is overwritten)");
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  ~StagedDir() {
    std::error_code ec;
    if (!done_) fs::remove_all(tmp_, ec);
  }
  fs::path path() const { return tmp_; }
  void commit() {
    fs::rename(tmp_, final_);
    done_ = true;
  }

 private:
  std::string final_, tmp_;
  bool done_ = false;
};

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

size_t largest(const std::vector<ParamTensor>& layout) {
  size_t n = 0;
  for (const ParamTensor& t : layout) n = std::max(n, t.numel);
  return n;
}

}  // namespace

HfImportResult import_hf(const std::string& hf_dir, const std::string& out_dir, const HfImportOptions& opts,
                         const ImportedConfig& config_of) {
  HfSource src(hf_dir, opts.seq_len);
  HfImportResult res;
  res.model = src.model();
  const ModelConfig& mc = res.model.model;
  const std::vector<ParamTensor> layout = param_layout(mc, opts.selection);
  for (const ParamTensor& t : layout) src.check(t);  // every problem before any byte is written
  std::string tokenizer = opts.tokenizer;
  if (tokenizer.empty() && fs::exists(fs::path(hf_dir) / "tokenizer.model")) tokenizer = (fs::path(hf_dir) / "tokenizer.model").string();
  if (!tokenizer.empty()) {
    const data::Tokenizer tok = data::Tokenizer::load(tokenizer);
    if (tok.vocab_size() != mc.vocab_size)
      throw std::runtime_error("tokenizer '" + tokenizer + "' has " + std::to_string(tok.vocab_size()) +
                               " pieces, the model's vocab_size is " + std::to_string(mc.vocab_size));
  }
  StagedDir out(out_dir);
  std::vector<StPlanned> plan;
  for (const ParamTensor& t : layout) plan.push_back({t.name, "F32", t.shape});
  StWriter writer((out.path() / "model.safetensors").string(), plan,
                  {{"format", "pcmoe-checkpoint-1"}, {"step", "0"}, {"imported_from", "huggingface"}});
  std::vector<float> buf(largest(layout));
  for (const ParamTensor& t : layout) {
    src.read(t.name, t.shape, buf.data());
    writer.write_next(t.name, buf.data());
  }
  writer.finish();
  write_text(out.path() / "config.json", config_of(mc).dump(2) + "\n");
  if (!tokenizer.empty()) fs::copy_file(tokenizer, out.path() / "tokenizer.model");
  out.commit();
  res.tensors = layout.size();
  res.checkpoint_bytes = src.checkpoint_bytes();
  res.bytes_read = src.bytes_read();
  res.has_tokenizer = !tokenizer.empty();
  return res;
}

int export_hf(const std::string& ckpt_dir, const std::string& hf_dir, const HfExportOptions& opts) {
  const std::string where = resolve_checkpoint(ckpt_dir);
  const ModelConfig mc = read_checkpoint_model(where);
  const HfArch arch = hf_arch_for(mc);
  const std::vector<ParamTensor> layout = param_layout(mc, ParamSelection{});
  StReader in((fs::path(where) / "model.safetensors").string());
  for (const ParamTensor& t : layout) in.check(t.name, t.shape);
  HfExportInfo info{opts.max_position, -1, -1, opts.bf16};
  const fs::path tokenizer = fs::path(where) / "tokenizer.model";
  if (fs::exists(tokenizer)) {
    const data::Tokenizer tok = data::Tokenizer::load(tokenizer.string());
    info.bos_id = tok.bos_id();
    info.eos_id = tok.eos_id();
  }
  const nlohmann::json config = hf_config_json(mc, info);

  // Shards in the model's order, each holding tensors up to max_shard_bytes (one larger tensor
  // gets a shard of its own).
  const std::string dtype = opts.bf16 ? "BF16" : "F32";
  std::vector<std::vector<StPlanned>> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const ParamTensor& t : layout) {
    const uint64_t bytes = st_bytes(dtype, t.shape);
    if (!shards.back().empty() && shard_bytes + bytes > opts.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back({hf_tensor_name(arch, t.name), dtype, t.shape});
    shard_bytes += bytes;
    total += bytes;
  }
  const int n = (int)shards.size();
  auto shard_name = [&](int i) {
    if (n == 1) return std::string("model.safetensors");
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i + 1, n);
    return std::string(name);
  };
  StagedDir out(hf_dir);
  std::vector<float> buf(largest(layout));
  nlohmann::json weight_map = nlohmann::json::object();
  size_t next = 0;
  for (int i = 0; i < n; ++i) {
    StWriter writer((out.path() / shard_name(i)).string(), shards[i], {{"format", "pt"}});
    for (const StPlanned& p : shards[i]) {
      const ParamTensor& t = layout[next++];
      in.read_f32(t.name, t.shape, buf.data());
      writer.write_next(p.name, buf.data());
      weight_map[p.name] = shard_name(i);
    }
    writer.finish();
  }
  if (n > 1)
    write_text(out.path() / "model.safetensors.index.json",
               nlohmann::json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}.dump(2) + "\n");
  write_text(out.path() / "config.json", config.dump(2) + "\n");
  if (fs::exists(tokenizer)) fs::copy_file(tokenizer, out.path() / "tokenizer.model");
  out.commit();
  return n;
}

}  // namespace pcmoe
