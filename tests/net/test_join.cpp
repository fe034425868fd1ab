// Who may join a deployment: certificates that vouch only for their party's name and address
// host, and party names that cannot pose as a host.
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <set>

#include "net/certs.h"
#include "net/deploy.h"

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

}  // namespace
