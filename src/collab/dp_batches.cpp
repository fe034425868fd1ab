#include "collab/dp_batches.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace pcmoe {

std::filesystem::path dp_batches_file(const std::filesystem::path& run, int party) {
  return run / ("party" + std::to_string(party)) / "dp_batches.json";
}

void save_dp_batches(const std::filesystem::path& file, const DpBatches& b) {
  std::filesystem::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::trunc);
  out << nlohmann::json{{"unit", b.unit}, {"n_units", b.n_units}, {"rounds", b.rounds}}.dump() << "\n";
  if (!out) throw std::runtime_error("cannot write " + file.string());
}

DpBatches load_dp_batches(const std::filesystem::path& file) {
  const std::string where = file.string() + ": ";
  std::ifstream in(file);
  if (!in) throw std::runtime_error(where + "missing (a DP-SGD run of `pcmoe collab` writes it)");
  DpBatches b;
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    b.unit = j.at("unit").get<std::string>();
    b.n_units = j.at("n_units").get<int>();
    b.rounds = j.at("rounds").get<std::vector<std::vector<int>>>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(where + "malformed: " + e.what());
  }
  if (b.n_units <= 0) throw std::runtime_error(where + "n_units must be positive");
  for (const std::vector<int>& r : b.rounds)
    for (size_t i = 0; i < r.size(); ++i)
      if (r[i] < 0 || r[i] >= b.n_units || (i > 0 && r[i] <= r[i - 1]))
        throw std::runtime_error(where + "a round's units must be ascending, in [0, n_units)");
  return b;
}

DpBatches load_dp_batches(const std::filesystem::path& file, const std::string& unit, int n_units) {
  DpBatches b = load_dp_batches(file);
  if (b.unit != unit || b.n_units != n_units)
    throw std::runtime_error(file.string() + ": records " + std::to_string(b.n_units) + " " + b.unit +
                             " units; the run's data has " + std::to_string(n_units));
  return b;
}

}  // namespace pcmoe
