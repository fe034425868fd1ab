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

}  // namespace

DataConfig data_config_from_json(const nlohmann::json& j) {
  JsonFields fields(j, "data");
  // One source of truth: the model section owns the vocabulary size.
  if (j.contains("vocab_size")) {
    throw std::runtime_error("unknown config key 'data.vocab_size' (set model.vocab_size instead)");
  }
  DataConfig c;
  fields.read("corpus", c.corpus);
  fields.read("path", c.path);
  fields.read("categories", c.categories);
  fields.read("val_fraction", c.val_fraction);
  fields.read("split_seed", c.split_seed);
  fields.read("tokenizer_type", c.tokenizer_type);
  fields.read("cache_dir", c.cache_dir);
  fields.read("tokenizer", c.tokenizer);
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

nlohmann::json to_json(const DataConfig& c) {
  // vocab_size is left out: it belongs to the model section (see data_config_from_json).
  return {{"corpus", c.corpus},
          {"path", c.path},
          {"categories", c.categories},
          {"val_fraction", c.val_fraction},
          {"split_seed", c.split_seed},
          {"tokenizer_type", c.tokenizer_type},
          {"cache_dir", c.cache_dir},
          {"tokenizer", c.tokenizer}};
}

}  // namespace pcmoe::data
