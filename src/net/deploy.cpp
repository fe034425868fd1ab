#include "net/deploy.h"

#include <arpa/inet.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "collab/run_config.h"
#include "collab/runner.h"
#include "common/json_fields.h"
#include "common/sha256.h"

namespace pcmoe::net {

namespace {
bool valid_name(const std::string& s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  return true;
}

// A certificate proves its DNS names to whoever connects by them; a party named like a loopback
// host or an IP address would make its certificate good for that host too.
bool reserved_name(const std::string& s) {
  in_addr ip{};
  return s == "localhost" || s == "ip6-localhost" || s == "ip6-loopback" || inet_aton(s.c_str(), &ip) != 0;
}

// The deploy section's keys, each declared once (common/json_fields.h); "parties" and "server",
// lists and objects of {name, address}, are read apart (read_address).
const auto deploy_fields = [](auto& c, auto&& field) {
  field("call_timeout_s", c.call_timeout_s);
  field("join_timeout_s", c.join_timeout_s);
  field("dead_after_s", c.dead_after_s);
  field("checkpoint_every", c.checkpoint_every);
  field("chunk_bytes", c.chunk_bytes);
  field("max_message_bytes", c.max_message_bytes);
  field("mode", c.mode);
  field("fed_server", c.fed_server);
};

const auto address_fields = [](auto& a, auto&& field) {
  field("name", a.name);
  field("address", a.address);
};

// One {name, address} of deploy.parties or deploy.server (`where` names it in messages).
PartyAddress read_address(const nlohmann::json& j, const char* where) {
  PartyAddress a;
  JsonFields f(j, where);
  read_fields(f, a, address_fields);
  f.reject_unknown();
  return a;
}

}  // namespace

std::string address_host(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size())
    throw std::runtime_error("address '" + address + "' is not host:port");
  const std::string port = address.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 || std::stoi(port) < 1 ||
      std::stoi(port) > 65535)
    throw std::runtime_error("address '" + address + "' has no valid port");
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host;
}

bool is_loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

DeployConfig deploy_config_from_json(const nlohmann::json& j, const RunConfig& run) {
  DeployConfig c;
  JsonFields f(j, "deploy");
  nlohmann::json parties = nlohmann::json::array(), server = nullptr;
  f.read("parties", parties);
  read_fields(f, c, deploy_fields);
  f.read("server", server);
  f.reject_unknown();
  const int n = run.parties.n_parties;
  c.n_parties = n;
  if (!parties.is_array()) throw std::runtime_error("config key 'deploy.parties' must be a list of {name, address}");
  if (parties.empty()) {
    for (int i = 0; i < n; ++i) c.parties.push_back({"party" + std::to_string(i), "127.0.0.1:" + std::to_string(50051 + i)});
  } else {
    for (const nlohmann::json& p : parties) c.parties.push_back(read_address(p, "deploy.parties[]"));
  }
  if ((int)c.parties.size() != n)
    throw std::runtime_error("config key 'deploy.parties' lists " + std::to_string(c.parties.size()) +
                             " parties but parties.n_parties is " + std::to_string(n));
  if (c.mode != "pc-moe" && !is_fed_mode(c.mode))
    throw std::runtime_error("config key 'deploy.mode' is '" + c.mode + "': expected pc-moe, " +
                             fed_mode_names(" or "));
  if (c.fed_server != "party0" && c.fed_server != "separate")
    throw std::runtime_error("config key 'deploy.fed_server' is '" + c.fed_server + "': expected party0 or separate");
  if (c.fed_server == "separate" && !is_federated(c))
    throw std::runtime_error("config key 'deploy.fed_server' is 'separate', but deploy.mode " + c.mode +
                             " has no federated server");
  if (c.fed_server == "separate") {
    if (!server.is_object())
      throw std::runtime_error("config key 'deploy.fed_server' is 'separate': give the server process its "
                               "{\"name\", \"address\"} in 'deploy.server'");
    const PartyAddress a = read_address(server, "deploy.server");
    if (a.address.empty()) throw std::runtime_error("config key 'deploy.server.address' is missing: where the server listens");
    c.parties.push_back(a);  // index n: admitted, coordinated and certified as a party is
  } else if (!server.is_null()) {
    throw std::runtime_error("config key 'deploy.server' is for deploy.fed_server 'separate' (the server runs in party 0's "
                             "process by default)");
  }
  if (is_federated(c)) {
    if (run.privacy.enabled)
      throw std::runtime_error("config key 'deploy.mode' is " + c.mode + ": federated modes do not run DP-SGD (the privacy section)");
    if (run.audit.enabled)
      throw std::runtime_error("config key 'deploy.mode' is " + c.mode + ": the federated server's leakage audit runs in "
                               "`pcmoe collab` only (drop the audit section, or audit the mode there)");
    check_fed_config(run.fed, run.model, run.train.steps, {c.mode});
  }
  std::set<std::string> names, addresses;
  for (const PartyAddress& a : c.parties) {
    if (!valid_name(a.name))
      throw std::runtime_error("config key 'deploy.parties': party name '" + a.name +
                               "' must be 1-63 characters of a-z, 0-9 and '-' (it is a certificate DNS name)");
    if (reserved_name(a.name))
      throw std::runtime_error("config key 'deploy.parties': party name '" + a.name +
                               "' is reserved (a loopback host name or an IP address): its certificate would vouch "
                               "for that host");
    address_host(a.address);
    if (!names.insert(a.name).second) throw std::runtime_error("config key 'deploy.parties': name '" + a.name + "' twice");
    if (!addresses.insert(a.address).second)
      throw std::runtime_error("config key 'deploy.parties': address '" + a.address + "' twice");
  }
  // Each certificate names its party's address host too: no party may be named like another's host.
  for (const PartyAddress& a : c.parties)
    for (const PartyAddress& b : c.parties)
      if (a.name != b.name && a.name == address_host(b.address))
        throw std::runtime_error("config key 'deploy.parties': party name '" + a.name + "' is the host of " + b.name +
                                 "'s address " + b.address + ", whose certificate names that host");
  if (!(c.call_timeout_s > 0) || !(c.join_timeout_s > 0) || !(c.dead_after_s >= 0.5))
    throw std::runtime_error("config keys 'deploy.call_timeout_s' and 'deploy.join_timeout_s' must be > 0, "
                             "'deploy.dead_after_s' at least 0.5");
  if (c.checkpoint_every < 0)
    throw std::runtime_error("config key 'deploy.checkpoint_every' must be >= 0 (rounds; 0: checkpoint at the end only)");
  if (c.chunk_bytes < 1024 || c.chunk_bytes > (1u << 30))
    throw std::runtime_error("config key 'deploy.chunk_bytes' must be between 1 KiB and 1 GiB");
  if (c.max_message_bytes == 0) c.max_message_bytes = c.chunk_bytes + 64 * 1024;
  if (c.max_message_bytes < c.chunk_bytes + 1024 || c.max_message_bytes > (size_t)INT32_MAX)
    throw std::runtime_error("config key 'deploy.max_message_bytes' must be at least deploy.chunk_bytes + 1 KiB "
                             "(a chunk and its envelope) and below 2 GiB");
  c.max_payload_bytes = max_payload_bytes(run);
  return c;
}

bool is_federated(const DeployConfig& c) { return is_fed_mode(c.mode); }

int fed_server_index(const DeployConfig& c) { return c.fed_server == "separate" ? c.n_parties : 0; }

size_t max_payload_bytes(const RunConfig& run) {
  const ModelConfig& m = run.model;
  const size_t rows = (size_t)run.train.batch_size * m.seq_len * m.top_k;
  const size_t rows_call = 8 + 4 * (size_t)m.n_experts + rows * m.d_model * sizeof(float);
  const size_t expert_call = 8 + 3 * (size_t)m.d_ff * m.d_model * sizeof(float);
  return std::max(rows_call, expert_call) + 64 * 1024;
}

SectionHashes section_hashes(const DeployRun& dr) {
  const nlohmann::json run = to_json(dr.run);
  const DeployConfig& d = dr.deploy;
  nlohmann::json data = run["data"], collab = run["collab"], deploy = fields_to_json(d, deploy_fields);
  data.erase("cache_dir");
  data.erase("tokenizer");
  collab.erase("modes");
  deploy.erase("call_timeout_s");
  deploy.erase("join_timeout_s");
  deploy["parties"] = nlohmann::json::array();
  for (const PartyAddress& p : d.parties) deploy["parties"].push_back(fields_to_json(p, address_fields));
  const std::string tokenizer = shared_tokenizer_file(dr.run);
  return {{"model", sha256_hex(run["model"].dump())},
          {"train", sha256_hex(run["train"].dump())},
          {"data", sha256_hex(data.dump())},
          {"tokenizer", tokenizer.empty() ? sha256_hex("") : sha256_file(tokenizer)},
          {"parties", sha256_hex(run["parties"].dump())},
          {"collab", sha256_hex(collab.dump())},
          {"fed", sha256_hex(run["fed"].dump())},
          {"privacy", sha256_hex(run.value("privacy", nlohmann::json()).dump())},
          {"audit", sha256_hex(run.value("audit", nlohmann::json()).dump())},
          {"deploy", sha256_hex(deploy.dump())}};
}

std::string config_hash(SectionHashes sections) {
  sections.erase("deploy");
  return sha256_hex(nlohmann::json(sections).dump());
}

std::string differing_sections(const SectionHashes& ours, const SectionHashes& theirs, const std::string& our_name,
                               const std::string& their_name) {
  SectionHashes all = ours;
  all.insert(theirs.begin(), theirs.end());
  const auto shown = [](const SectionHashes& h, const std::string& section) {
    const auto it = h.find(section);
    return it == h.end() ? std::string("none") : it->second.substr(0, 12) + "...";
  };
  std::string out;
  for (const auto& [section, unused] : all) {
    if (ours.count(section) && theirs.count(section) && ours.at(section) == theirs.at(section)) continue;
    out += (out.empty() ? "" : "; ") + section + " (" + their_name + " " + shown(theirs, section) + ", " + our_name +
           " " + shown(ours, section) + ")";
  }
  return out;
}

DeployRun load_deploy_run(const std::string& path) {
  nlohmann::json j = read_config_json(path);
  try {
    nlohmann::json deploy = nlohmann::json::object();
    if (j.is_object() && j.contains("deploy")) {
      deploy = j["deploy"];
      j.erase("deploy");
    }
    DeployRun r;
    r.run = run_config_from_json(j);
    r.deploy = deploy_config_from_json(deploy, r.run);
    return r;
  } catch (const std::exception& e) {
    throw std::runtime_error("config file '" + path + "': " + e.what());
  }
}

}  // namespace pcmoe::net
