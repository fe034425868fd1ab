// The run config's two JSON directions and the federated mode table. Each section declares its
// keys once (common/json_fields.h), so what a config sets is what its JSON says and reads back
// to: config hashes (joins, checkpoints, audit recordings) depend on it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "collab/fed_config.h"
#include "collab/run_config.h"

namespace fs = std::filesystem;
using namespace pcmoe;

namespace {

// `written` holds every key of `given` with its value (a float as the config's float holds it).
void expect_keys_written(const nlohmann::json& given, const nlohmann::json& written, const std::string& where) {
  for (const auto& [section, keys] : given.items()) {
    ASSERT_TRUE(written.contains(section)) << where << ": section " << section;
    for (const auto& [key, value] : keys.items()) {
      ASSERT_TRUE(written[section].contains(key)) << where << ": " << section << "." << key;
      const nlohmann::json& back = written[section][key];
      if (value.is_number_float())
        EXPECT_EQ((float)back.get<double>(), (float)value.get<double>()) << where << ": " << section << "." << key;
      else
        EXPECT_EQ(back, value) << where << ": " << section << "." << key;
    }
  }
}

}  // namespace

TEST(ConfigJson, ShippedConfigsReadBackFromWhatTheyWrite) {
  int checked = 0;
  for (const fs::directory_entry& e : fs::directory_iterator(fs::path(PCMOE_SOURCE_DIR) / "configs")) {
    if (e.path().extension() != ".json") continue;
    const std::string where = e.path().filename().string();
    const nlohmann::json given = read_config_json(e.path().string());
    const nlohmann::json written = to_json(run_config_from_json(given));
    EXPECT_EQ(to_json(run_config_from_json(written)).dump(), written.dump()) << where;
    expect_keys_written(given, written, where);
    ++checked;
  }
  EXPECT_GE(checked, 5);
}

TEST(ConfigJson, LaterKeysAreWrittenOnlyOffTheirDefault) {
  RunConfig c;
  EXPECT_FALSE(to_json(c)["collab"].contains("exchange"));  // earlier configs hash as they did
  c.collab.exchange = "weights";
  const nlohmann::json j = to_json(c);
  EXPECT_EQ(j["collab"]["exchange"], "weights");
  EXPECT_EQ(run_config_from_json(j).collab.exchange, "weights");
  // The train and fed sections write every key, defaults included.
  EXPECT_EQ(j["train"].size(), 17u);
  EXPECT_EQ(j["fed"].size(), 19u);
  EXPECT_EQ(j["fed"]["lora_targets"], nlohmann::json({"wq", "wk", "wv", "wo", "experts"}));
}

TEST(FedModes, OneRowPerModeAndNamesFromTheTable) {
  const std::vector<FedMode>& table = fed_mode_table();
  std::set<std::string> names;
  for (const FedMode& m : table) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name;
    EXPECT_EQ(&fed_mode(m.name), &m);
    EXPECT_TRUE(is_fed_mode(m.name));
    EXPECT_EQ(m.compressed(), m.codec != FedCodec::fp32);
  }
  EXPECT_EQ(table.size(), 5u);
  EXPECT_EQ(std::count_if(table.begin(), table.end(), [](const FedMode& m) { return m.lora; }), 1);
  EXPECT_FALSE(is_fed_mode("pc-moe"));
  EXPECT_EQ(find_fed_mode("fedprox"), nullptr);
  EXPECT_THROW(fed_mode("fedprox"), std::runtime_error);
  EXPECT_EQ(fed_mode_names(" or "), "fedavg, int8, topk-ef, cg-fedllm or fedavg-lora");
  // A config naming an unknown mode is refused with the table's names.
  try {
    run_config_from_json({{"collab", {{"modes", {"fedprox"}}}}});
    FAIL() << "an unknown mode was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("fedavg, int8, topk-ef, cg-fedllm, fedavg-lora"), std::string::npos)
        << e.what();
  }
}
