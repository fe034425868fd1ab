// Who may join a deployment: certificates that vouch only for their party's name and address
// host, party names that cannot pose as a host, and the per-section hashes the coordinator
// compares, naming the section that differs and leaving no trace of a refused join.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <set>

#include "common/sha256.h"
#include "net/certs.h"
#include "net/coordinator.h"
#include "net/deploy.h"
#include "free_port.h"

namespace fs = std::filesystem;
using namespace pcmoe;
using namespace pcmoe::net;

namespace {

// A run config with a deploy section of the given {name, address} pairs.
DeployRun deploy_run(nlohmann::json cfg, const std::vector<std::pair<std::string, std::string>>& parties) {
  cfg["parties"]["n_parties"] = (int)parties.size();
  nlohmann::json list = nlohmann::json::array();
  for (const auto& [name, address] : parties) list.push_back({{"name", name}, {"address", address}});
  cfg["deploy"]["parties"] = list;
  const nlohmann::json deploy = cfg["deploy"];
  cfg.erase("deploy");
  DeployRun r;
  r.run = run_config_from_json(cfg);
  r.deploy = deploy_config_from_json(deploy, r.run);
  return r;
}

// The subject-alternative names of a PEM certificate, as "DNS:x" / "IP:a.b.c.d".
std::set<std::string> alt_names(const fs::path& pem) {
  FILE* f = std::fopen(pem.c_str(), "r");
  X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  std::set<std::string> out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_DNS) {
      out.insert("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName))));
    } else if (g->type == GEN_IPADD && ASN1_STRING_length(g->d.iPAddress) == 4) {
      const unsigned char* b = ASN1_STRING_get0_data(g->d.iPAddress);
      out.insert("IP:" + std::to_string(b[0]) + "." + std::to_string(b[1]) + "." + std::to_string(b[2]) + "." +
                 std::to_string(b[3]));
    }
  }
  GENERAL_NAMES_free(names);
  X509_free(cert);
  return out;
}

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(Certs, NameOnlyTheirPartyAndItsAddressHost) {
  const DeployRun r = deploy_run(nlohmann::json::object(), {{"alpha", "10.0.0.1:7000"},
                                                            {"beta", "beta.example.org:7000"},
                                                            {"gamma", "127.0.0.1:7002"},
                                                            {"delta", "delta:7003"}});
  const fs::path dir = fs::temp_directory_path() / ("pcmoe-join-certs-" + std::to_string(getpid()));
  make_certs(r.deploy, dir.string());
  EXPECT_EQ(alt_names(dir / "alpha.pem"), (std::set<std::string>{"DNS:alpha", "IP:10.0.0.1"}));
  EXPECT_EQ(alt_names(dir / "beta.pem"), (std::set<std::string>{"DNS:beta", "DNS:beta.example.org"}));
  EXPECT_EQ(alt_names(dir / "gamma.pem"), (std::set<std::string>{"DNS:gamma", "IP:127.0.0.1"}))
      << "a loopback address only where the party listens on loopback";
  EXPECT_EQ(alt_names(dir / "delta.pem"), (std::set<std::string>{"DNS:delta"}));
  fs::remove_all(dir);
}

TEST(Deploy, ReservedPartyNamesAreRefused) {
  for (const std::string name : {"localhost", "ip6-localhost", "ip6-loopback", "127", "2130706433", "0x7f000001"}) {
    const std::string e = refusal([&] { deploy_run({}, {{name, "10.0.0.1:7000"}, {"beta", "10.0.0.2:7000"}}); });
    EXPECT_NE(e.find("party name '" + name + "' is reserved (a loopback host name or an IP address)"), std::string::npos)
        << name << ": " << e;
  }
  EXPECT_NE(refusal([] { deploy_run({}, {{"", "10.0.0.1:7000"}}); }).find("party name '' must be 1-63 characters"),
            std::string::npos);
  // beta's certificate names the host "alpha": no party may be called that.
  EXPECT_NE(refusal([] { deploy_run({}, {{"alpha", "10.0.0.1:7000"}, {"beta", "alpha:7000"}}); })
                .find("party name 'alpha' is the host of beta's address alpha:7000"),
            std::string::npos);
  EXPECT_EQ(refusal([] { deploy_run({}, {{"party0", "127.0.0.1:7000"}, {"127a", "10.0.0.2:7000"}}); }), "");
}

class SectionHashesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pcmoe-join-" + std::to_string(getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "tok.model") << "one tokenizer";
    std::ofstream(dir_ / "copy.model") << "one tokenizer";
    std::ofstream(dir_ / "other.model") << "another tokenizer";
    base_ = {{"data", {{"tokenizer", (dir_ / "tok.model").string()}}}, {"parties", {{"mode", "iid"}}}};
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The sections in which `changed` (a JSON patch of the base config) differs from the base.
  std::string diff(const nlohmann::json& patch) {
    nlohmann::json cfg = base_;
    cfg.merge_patch(patch);
    const std::vector<std::pair<std::string, std::string>> parties = {{"party0", "127.0.0.1:" + std::to_string(port0_)},
                                                                      {"party1", "127.0.0.1:" + std::to_string(port1_)}};
    return differing_sections(section_hashes(deploy_run(base_, parties)), section_hashes(deploy_run(cfg, parties)),
                              "coordinator", "party1");
  }

  fs::path dir_;
  nlohmann::json base_;
  int port0_ = free_port(), port1_ = free_port();
};

TEST_F(SectionHashesTest, EachChangeNamesItsSection) {
  const std::vector<std::pair<nlohmann::json, std::string>> changes = {
      {{{"model", {{"d_model", 64}}}}, "model"},
      {{{"train", {{"lr", 0.02}}}}, "train"},
      {{{"data", {{"val_fraction", 0.2}}}}, "data"},
      {{{"data", {{"tokenizer", (dir_ / "other.model").string()}}}}, "tokenizer"},
      {{{"parties", {{"seed", 2}}}}, "parties"},
      {{{"collab", {{"wire_dtype", "bf16"}}}}, "collab"},
      {{{"fed", {{"local_steps", 2}}}}, "fed"},
      {{{"privacy", {{"sampling_rate", 0.1}, {"noise_multiplier", 1.0}}}}, "privacy"},
      {{{"audit", {{"observer", 1}}}}, "audit"},
      {{{"deploy", {{"checkpoint_every", 3}}}}, "deploy"},
  };
  for (const auto& [patch, section] : changes) {
    const std::string d = diff(patch);
    EXPECT_EQ(d.rfind(section + " (party1 ", 0), 0u) << patch.dump() << ": " << d;
    EXPECT_NE(d.find(", coordinator "), std::string::npos) << d;
    EXPECT_EQ(d.find(';'), std::string::npos) << "only " << section << " differs: " << d;
  }
  const std::string both =
      diff({{"train", {{"lr", 0.02}}}, {"privacy", {{"sampling_rate", 0.1}, {"noise_multiplier", 1.0}}}});
  EXPECT_EQ(both.rfind("privacy (party1 ", 0), 0u) << both;
  EXPECT_NE(both.find("; train (party1 "), std::string::npos) << "every differing section is named: " << both;
}

TEST_F(SectionHashesTest, LocalSettingsAndTheTokenizerPathDoNotCount) {
  EXPECT_EQ(diff({{"data", {{"cache_dir", "/elsewhere"}, {"tokenizer", (dir_ / "copy.model").string()}}},
                  {"collab", {{"modes", {"pc-moe", "fedavg"}}}},
                  {"deploy", {{"call_timeout_s", 5}, {"join_timeout_s", 9}}}}),
            "");
}

// The deploy section's hash is of the keys every process must agree on, written as below: the
// bytes earlier deployments hashed, so their checkpoints and joins still match.
TEST_F(SectionHashesTest, DeployHashIsOfTheAgreedKeysAsEverWritten) {
  const DeployRun r = deploy_run(base_, {{"party0", "127.0.0.1:5001"}, {"party1", "127.0.0.1:5002"}});
  const std::string agreed =
      R"({"checkpoint_every":10,"chunk_bytes":4194304,"dead_after_s":5.0,"fed_server":"party0",)"
      R"("max_message_bytes":4259840,"mode":"pc-moe","parties":[{"address":"127.0.0.1:5001","name":"party0"},)"
      R"({"address":"127.0.0.1:5002","name":"party1"}]})";
  EXPECT_EQ(section_hashes(r).at("deploy"), sha256_hex(agreed));
}

// A refused join leaves no trace: party 0, alone, still waits for party 1, which then joins
// with the right sections.
TEST_F(SectionHashesTest, CoordinatorRefusesAnotherPrivacySectionWithoutJoiningIt) {
  nlohmann::json cfg = base_;
  cfg["deploy"] = {{"join_timeout_s", 2}, {"call_timeout_s", 5}};
  const std::vector<std::pair<std::string, std::string>> parties = {{"party0", "127.0.0.1:" + std::to_string(port0_)},
                                                                    {"party1", "127.0.0.1:" + std::to_string(port1_)}};
  const DeployRun r = deploy_run(cfg, parties);
  const SectionHashes ours = section_hashes(r);
  cfg["privacy"] = {{"sampling_rate", 0.1}, {"noise_multiplier", 1.0}};
  const SectionHashes theirs = section_hashes(deploy_run(cfg, parties));

  CoordinatorService coordinator(r.deploy, false, ours, 1, 4);  // outlives the server that serves it
  GrpcTransport net0(r.deploy, 0, std::nullopt), net1(r.deploy, 1, std::nullopt);
  net0.start(&coordinator);
  CoordinatorClient c0(net0, 0), c1(net1, 1);
  const std::string e = refusal([&] { c1.join(theirs, 0, 0, 4); });
  EXPECT_NE(e.find("FAILED_PRECONDITION: party1's config differs from the coordinator's in privacy (party1 "), std::string::npos)
      << e;
  EXPECT_EQ(e.find("; "), std::string::npos) << "only privacy differs: " << e;
  EXPECT_NE(refusal([&] { c0.join(ours, 0, 0, 4); }).find("waiting for party1"), std::string::npos)
      << "the refused party was not counted as joined";
  auto first1 = std::async(std::launch::async, [&] { return c1.join(ours, 0, 0, 4); });
  EXPECT_EQ(c0.join(ours, 0, 0, 4), 0);
  EXPECT_EQ(first1.get(), 0);
}

}  // namespace
