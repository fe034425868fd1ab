// `pcmoe collab`: from one config and seed, trains PC-MoE, a centralised model and local-only
// models on the same party data and the same tokens per party, then compares them.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "train/train_config.h"

namespace pcmoe {

// Writes out_dir/metrics.jsonl (every turn of every mode, with the schedule) and
// out_dir/report.json; prints progress and the comparison table. Returns the report.
nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir);

}  // namespace pcmoe
