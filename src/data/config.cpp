// The "data" config section, read strictly so that typos fail loudly instead of being ignored.
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/json_fields.h"
#include "data/data.h"

namespace pcmoe::data {
namespace {

void require_one_of(const std::string& value, const std::string& key,
                    std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* option : allowed) {
    if (value == option) return;
    list += (list.empty() ? "" : ", ") + std::string(option);
  }
  throw std::runtime_error("config key '" + key + "' is '" + value + "'; expected one of: " + list);
}

// The section's keys, each declared once (common/json_fields.h). vocab_size is not one: it
// belongs to the model section.
const auto data_fields = [](auto& c, auto&& field) {
  field("corpus", c.corpus);
  field("path", c.path);
  field("categories", c.categories);
  field("val_fraction", c.val_fraction);
  field("split_seed", c.split_seed);
  field("tokenizer_type", c.tokenizer_type);
  field("cache_dir", c.cache_dir);
  field("tokenizer", c.tokenizer);
};

}  // namespace

DataConfig data_config_from_json(const nlohmann::json& j) {
  JsonFields fields(j, "data");
  // One source of truth: the model section owns the vocabulary size.
  if (j.contains("vocab_size")) {
    throw std::runtime_error("unknown config key 'data.vocab_size' (set model.vocab_size instead)");
  }
  DataConfig c;
  read_fields(fields, c, data_fields);
  fields.reject_unknown();

  require_one_of(c.corpus, "data.corpus", {"brown", "text", "jsonl"});
  require_one_of(c.tokenizer_type, "data.tokenizer_type", {"bpe", "unigram"});
  if (c.path.empty()) throw std::runtime_error("config key 'data.path' must not be empty");
  if (c.cache_dir.empty()) throw std::runtime_error("config key 'data.cache_dir' must not be empty");
  if (!std::isfinite(c.val_fraction) || c.val_fraction < 0.0 || c.val_fraction >= 1.0) {
    throw std::runtime_error("config key 'data.val_fraction' must be in [0, 1), got " +
                             std::to_string(c.val_fraction));
  }
  return c;
}

nlohmann::json to_json(const DataConfig& c) { return fields_to_json(c, data_fields); }

}  // namespace pcmoe::data
