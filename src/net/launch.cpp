#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/stopwatch.h"
#include "net/certs.h"
#include "net/deploy.h"
#include "net/party.h"

extern char** environ;

namespace fs = std::filesystem;

namespace pcmoe::net {

using clock_type = std::chrono::steady_clock;

nlohmann::json run_launch(const std::string& exe, const std::string& config, const std::string& out_dir, bool insecure,
                          bool resume, int64_t until) {
  const DeployRun dr = load_deploy_run(config);
  if (dr.run.privacy.enabled)
    throw std::runtime_error("DP-SGD (the privacy section) runs in `pcmoe collab` only; deployed parties do not "
                             "carry per-unit turns yet");
  const int n = dr.run.parties.n_parties;
  const int processes = (int)dr.deploy.parties.size();  // the parties and a separate federated server
  const bool federated = is_federated(dr.deploy);
  if (federated && (resume || until >= 0))
    throw std::runtime_error("--resume and --until are for pc-moe deployments; deploy.mode " + dr.deploy.mode +
                             " runs every round in one go");
  for (const PartyAddress& p : dr.deploy.parties)
    if (!is_loopback_host(address_host(p.address)))
      throw std::runtime_error("launch starts every party on this machine, but " + p.name + " is at " + p.address +
                               "; run `pcmoe party` on each host instead");
  fs::create_directories(out_dir);
  const std::string certs = (fs::path(out_dir) / "certs").string();
  if (!insecure && !resume) make_certs(dr.deploy, certs);
  // The parties share this machine's cores: OpenMP threads spinning while they wait would take
  // them from each other (runs 3-10x slower), so they sleep instead, unless the user chose.
  setenv("OMP_WAIT_POLICY", "passive", 0);
  const auto t0 = clock_type::now();
  // party<i> / server: its log and output directory; "party i" / "server" in messages.
  const auto label = [n](int p) { return p < n ? "party" + std::to_string(p) : std::string("server"); };
  const auto who = [n](int p) { return p < n ? "party " + std::to_string(p) : std::string("server"); };
  std::vector<pid_t> pids(processes);
  for (int p = 0; p < processes; ++p) {
    const std::string log = (fs::path(out_dir) / (label(p) + ".log")).string();
    const std::string dir = (fs::path(out_dir) / label(p)).string();
    std::vector<std::string> args = {exe, "server", "--config", config, "--out", dir};
    if (p < n) args = {exe, "party", "--config", config, "--party", std::to_string(p), "--out", dir};
    if (resume) args.push_back("--resume");
    if (until >= 0) args.insert(args.end(), {"--until", std::to_string(until)});
    if (insecure) args.push_back("--insecure");
    else args.insert(args.end(), {"--certs", certs});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    const int rc = posix_spawn(&pids[p], exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
      for (int q = 0; q < p; ++q) kill(pids[q], SIGKILL);
      throw std::runtime_error("cannot start " + who(p) + ": " + std::strerror(rc));
    }
    std::fprintf(stderr, "launch: %s (%s at %s) is pid %d, log %s\n", who(p).c_str(), dr.deploy.parties[p].name.c_str(),
                 dr.deploy.parties[p].address.c_str(), (int)pids[p], log.c_str());
  }
  nlohmann::json report = {{"parties", nlohmann::json::array()}, {"ok", true}, {"mode", dr.deploy.mode}};
  std::vector<int> codes(processes, -1);
  for (int left = processes; left > 0; --left) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) throw std::runtime_error("waiting for the parties failed");
    const int p = int(std::find(pids.begin(), pids.end(), pid) - pids.begin());
    if (p == processes) {
      ++left;
      continue;
    }
    codes[p] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::fprintf(stderr, "launch: %s exited with %d\n", who(p).c_str(), codes[p]);
  }
  const double wall = seconds_since(t0);
  std::vector<nlohmann::json> lines;
  for (int p = 0; p < processes; ++p) {
    nlohmann::json pr = {{"exit_code", codes[p]}};
    const fs::path dir = fs::path(out_dir) / label(p);
    std::ifstream rep(dir / "report.json");
    if (codes[p] == 0 && rep) pr["report"] = nlohmann::json::parse(rep);
    std::ifstream m(dir / "metrics.jsonl");
    for (std::string line; std::getline(m, line);)
      if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
    if (codes[p] != 0) report["ok"] = false;
    if (p < n) {
      pr["party"] = p;
      report["parties"].push_back(pr);
    } else {
      report["server"] = pr;
    }
  }
  // collab's order: PC-MoE's turns as handed out; a federated round's lines in party order.
  const auto order = [](const nlohmann::json& m) {
    return m.contains("turn") ? std::make_pair(m["turn"].get<int64_t>(), 0)
                              : std::make_pair(m["round"].get<int64_t>(), m["party"].get<int>());
  };
  std::sort(lines.begin(), lines.end(),
            [&](const nlohmann::json& a, const nlohmann::json& b) { return order(a) < order(b); });
  std::ofstream merged(fs::path(out_dir) / "metrics.jsonl", std::ios::trunc);
  for (const nlohmann::json& t : lines) merged << t.dump() << "\n";
  // A line is a turn of one optimizer step, or a round of fed.local_steps steps.
  const double steps_per_line = federated ? dr.run.fed.local_steps : 1;
  const double tokens = (double)lines.size() * steps_per_line * (double)tokens_per_step(dr.run);
  report[federated ? "party_rounds" : "turns"] = lines.size();
  report["wall_seconds"] = wall;
  report["tokens"] = tokens;
  report["tokens_per_s"] = wall > 0 ? tokens / wall : 0.0;
  std::ofstream(fs::path(out_dir) / "report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace pcmoe::net
