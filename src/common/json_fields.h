// Strict reading of one JSON config section: every key must be known and of the right type, so
// a typo in a config is an error, not a silently ignored setting.
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>

namespace pcmoe {

class JsonFields {
 public:
  // `section` names the object in messages, e.g. "model".
  JsonFields(const nlohmann::json& object, std::string section) : j_(object), section_(std::move(section)) {
    if (!j_.is_object()) throw std::runtime_error("config section '" + section_ + "' must be a JSON object");
  }

  // Reads key into `out` if present (keeping the default otherwise).
  template <class T>
  void read(const char* key, T& out) {
    seen_.insert(key);
    auto it = j_.find(key);
    if (it == j_.end()) return;
    try {
      if constexpr (std::is_same_v<T, bool>) {
        if (!it->is_boolean()) throw std::runtime_error("expected true or false");
      } else if constexpr (std::is_integral_v<T>) {
        if (!it->is_number_integer()) throw std::runtime_error("expected an integer");
        // A negative value would silently wrap around in an unsigned field.
        if (std::is_unsigned_v<T> && !it->is_number_unsigned() && it->template get<int64_t>() < 0)
          throw std::runtime_error("expected a non-negative integer");
      } else if constexpr (std::is_floating_point_v<T>) {
        if (!it->is_number()) throw std::runtime_error("expected a number");
      } else if constexpr (std::is_same_v<T, std::string>) {
        if (!it->is_string()) throw std::runtime_error("expected a string");
      }
      out = it->template get<T>();
    } catch (const std::exception& e) {
      throw std::runtime_error("config key '" + section_ + "." + key + "': " + e.what() +
                               ", got " + it->dump());
    }
  }

  // Call after the last read(): rejects keys that no read() asked for.
  void reject_unknown() const {
    for (auto& [key, value] : j_.items())
      if (!seen_.count(key)) throw std::runtime_error("unknown config key '" + section_ + "." + key + "'");
  }

 private:
  const nlohmann::json& j_;
  std::string section_;
  std::set<std::string> seen_;
};

// A config section declares each field once, as a list `fields(config, field)` that calls
// field("key", config.member) per field; both JSON directions walk that one list. A key added
// after configs were saved passes its default as a third argument: it is written only when it
// differs, so the hashes of earlier configs (joins, checkpoints, recordings) stay what they were.
template <class Config, class Fields>
void read_fields(JsonFields& f, Config& c, const Fields& fields) {
  fields(c, [&f](const char* key, auto& member, const auto&...) { f.read(key, member); });
}

template <class Config, class Fields>
nlohmann::json fields_to_json(const Config& c, const Fields& fields) {
  nlohmann::json j = nlohmann::json::object();
  fields(c, [&j](const char* key, const auto& member, const auto&... unwritten_default) {
    if (!(... || (member == unwritten_default))) j[key] = member;
  });
  return j;
}

}  // namespace pcmoe
