// pcmoe import / export: Hugging Face Mixtral and OLMoE checkpoints in and out (docs/hf.md).
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "collab/expert_host.h"
#include "collab/run_config.h"
#include "train/hf_checkpoint.h"
#include "train/trainer.h"

using namespace pcmoe;

namespace {

std::map<std::string, std::string> hf_args(int argc, char** argv, const std::vector<std::string>& valued,
                                           const std::vector<std::string>& flags) {
  std::map<std::string, std::string> out;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (std::find(flags.begin(), flags.end(), a) != flags.end()) out[a] = "1";
    else if (std::find(valued.begin(), valued.end(), a) == valued.end()) throw std::runtime_error("unknown argument '" + a + "'");
    else if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
    else out[a] = argv[++i];
  }
  return out;
}

std::string required(const std::map<std::string, std::string>& a, const std::string& key) {
  auto it = a.find(key);
  if (it == a.end()) throw std::runtime_error("missing " + key);
  return it->second;
}

int64_t integer(const std::map<std::string, std::string>& a, const std::string& key, int64_t fallback, int64_t lo) {
  auto it = a.find(key);
  if (it == a.end()) return fallback;
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != it->second.size() || v < lo)
    throw std::runtime_error(key + " expects an integer >= " + std::to_string(lo) + ", got '" + it->second + "'");
  return v;
}

// This process image's own high-water mark (VmHWM): getrusage's ru_maxrss keeps the parent's
// peak across fork and exec, so a large parent would hide what the import itself needed.
uint64_t own_peak_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return peak_rss_bytes();
  char line[256];
  unsigned long long kib = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %llu kB", &kib) == 1) break;
  std::fclose(f);
  return kib ? kib * 1024 : peak_rss_bytes();
}

const char* arch_name(HfArch a) { return a == HfArch::kOlmoe ? "OlmoeForCausalLM" : "MixtralForCausalLM"; }

}  // namespace

int cmd_import(int argc, char** argv) {
  auto a = hf_args(argc, argv, {"--hf", "--out", "--seq-len", "--tokenizer", "--parties", "--party"}, {"--json"});
  HfImportOptions opts;
  opts.seq_len = (int)integer(a, "--seq-len", 0, 2);
  if (a.count("--tokenizer")) opts.tokenizer = a.at("--tokenizer");
  const int parties = (int)integer(a, "--parties", 0, 1);
  if (a.count("--party") != (parties > 0 ? 1u : 0u)) throw std::runtime_error("--parties and --party go together");
  const int party = (int)integer(a, "--party", 0, 0);
  if (parties > 0) {
    if (party >= parties) throw std::runtime_error("--party must be in 0.." + std::to_string(parties - 1));
    opts.selection = shard_selection(party, parties);
    opts.selection.backbone = true;
  }
  const HfImportResult r = import_hf(required(a, "--hf"), required(a, "--out"), opts,
                                     [](const ModelConfig& m) { return to_json(default_run_config(m)); });
  const nlohmann::json report = {{"architecture", arch_name(r.model.arch)}, {"tensors", r.tensors},
                                 {"checkpoint_bytes", r.checkpoint_bytes}, {"bytes_read", r.bytes_read},
                                 {"peak_rss_bytes", own_peak_rss_bytes()}, {"tokenizer", r.has_tokenizer}};
  if (a.count("--json")) {
    std::printf("%s\n", report.dump().c_str());
    return 0;
  }
  std::printf("imported %s: %zu tensors, %.1f of %.1f MiB read | peak RSS %.1f MiB | %s\n", arch_name(r.model.arch),
              r.tensors, r.bytes_read / 1048576.0, r.checkpoint_bytes / 1048576.0, own_peak_rss_bytes() / 1048576.0,
              r.has_tokenizer ? "tokenizer.model imported" : "no tokenizer (give --tokenizer FILE.model to train or generate)");
  return 0;
}

int cmd_export(int argc, char** argv) {
  auto a = hf_args(argc, argv, {"--checkpoint", "--hf", "--dtype", "--max-shard-bytes", "--max-position"}, {});
  HfExportOptions opts;
  const std::string dtype = a.count("--dtype") ? a.at("--dtype") : "fp32";
  if (dtype != "fp32" && dtype != "bf16") throw std::runtime_error("--dtype must be fp32 or bf16, not '" + dtype + "'");
  opts.bf16 = dtype == "bf16";
  opts.max_shard_bytes = (uint64_t)integer(a, "--max-shard-bytes", (int64_t)opts.max_shard_bytes, 1);
  opts.max_position = (int)integer(a, "--max-position", 0, 1);
  const std::string out = required(a, "--hf");
  const int shards = export_hf(required(a, "--checkpoint"), out, opts);
  std::printf("exported %s (%s, %d shard%s)\n", out.c_str(), dtype.c_str(), shards, shards == 1 ? "" : "s");
  return 0;
}
