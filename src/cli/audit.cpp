// `pcmoe audit`: runs the leakage attacks on a finished run's recording (src/eval/audit.h) and
// prints what the observer recovered next to the chance level.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <tuple>
#include <stdexcept>
#include <string>

#include "collab/recorder.h"
#include "eval/audit.h"

namespace {

constexpr const char* kAuditUsage =
    "usage: pcmoe audit --run DIR --out DIR2 [--fed-run DIR3]... [--public-windows N] [--mlp-every-round]\n"
    "                   [--secrets FILE] [--secrets-regex PATTERN]...\n"
    "  --run DIR            a `pcmoe collab` output made with an \"audit\" section (DIR/audit/)\n"
    "  --out DIR2           where audit.json goes\n"
    "  --fed-run DIR3       a `pcmoe collab` output of federated modes on the same parties and data:\n"
    "                       its server attacks and released models join the report (repeatable)\n"
    "  --public-windows N   windows of the observer's own text the attack models learn from (128)\n"
    "  --mlp-every-round    train the MLP decoder at every recorded round (default: the last)\n"
    "  --secrets FILE       strings the victims want kept, one a line (matched as whole words): which of\n"
    "                       them each attack rebuilt, per round (audit.json's \"secrets\")\n"
    "  --secrets-regex P    the same for an ECMAScript pattern (repeatable)\n";

struct AuditUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Per round and attack, all victims together: how many occurrences of the secrets were rebuilt
// whole or in part, how many distinct secrets at least once whole, and the share of all their
// tokens; beside it the share of the victims' whole batches the attack put back in place.
void print_secrets(const nlohmann::json& s) {
  std::printf("\nthe victims' secrets: %d strings or patterns, %d found in the recorded batches; tokens placed by the "
              "truth's positions, which the attacker does not have\n",
              s["patterns"].get<int>(), s["found"].get<int>());
  std::printf("%-6s %-11s %-18s %7s %7s %7s %9s %8s %8s\n", "round", "signal", "attack", "occurs", "exact", "partly",
              "distinct", "tokens", "batch");
  struct Sum {
    int64_t occ = 0, exact = 0, partly = 0, tokens = 0, right = 0;
    double batch = 0;
    int victims = 0;
  };
  std::map<std::tuple<int64_t, std::string, std::string>, Sum> sums;
  for (const auto& r : s["summary"]) {
    Sum& x = sums[{r["round"].get<int64_t>(), r["signal"].get<std::string>(), r["attack"].get<std::string>()}];
    x.occ += r["occurrences"].get<int64_t>();
    x.exact += r["exact"].get<int64_t>();
    x.partly += r["partly"].get<int64_t>();
    x.tokens += r["tokens"].get<int64_t>();
    x.right += r["tokens_recovered"].get<int64_t>();
    x.batch += r["batch_tokens_recovered"].get<double>();
    ++x.victims;
  }
  std::map<std::tuple<int64_t, std::string, std::string>, std::set<std::string>> distinct;
  for (const auto& sec : s["per_secret"])
    for (const auto& r : sec["results"])
      if (r["exact"].get<int>() > 0)
        distinct[{r["round"].get<int64_t>(), r["signal"].get<std::string>(), r["attack"].get<std::string>()}].insert(
            sec["secret"].get<std::string>());
  for (const auto& [key, x] : sums) {
    const auto& [round, signal, attack] = key;
    const auto d = distinct.find(key);
    std::printf("%-6lld %-11s %-18s %7lld %7lld %7lld %9zu %7.1f%% %7.1f%%\n", (long long)round, signal.c_str(),
                attack.c_str(), (long long)x.occ, (long long)x.exact, (long long)x.partly,
                d == distinct.end() ? (size_t)0 : d->second.size(), x.tokens ? 100.0 * x.right / x.tokens : 0.0,
                100 * x.batch / x.victims);
  }
}

// Weights mode: per round and victim, the bag of words the host read off its experts' gradient sums.
void print_weights_table(const nlohmann::json& report) {
  std::printf("\nwhat party %d (an expert host) receives in weights mode: no hidden state, output gradient or "
              "expert id (not sent in weights mode); its experts' gradient sums per turn, read as a bag of words "
              "of the turn\n", report["observer"].get<int>());
  std::printf("%-6s %-6s %6s %10s %8s %10s %10s %8s\n", "round", "victim", "layer", "precision", "recall", "chance",
              "own-text", "tokens");
  for (const auto& c : report["weights_bag_of_words"])
    std::printf("%-6lld %-6d %6d %9.1f%% %7.1f%% %9.1f%% %9.1f%% %8lld\n", (long long)c["round"].get<int64_t>(),
                c["party"].get<int>(), c["layer"].get<int>(), 100 * c["precision"].get<double>(),
                100 * c["recall"].get<double>(), 100 * c["chance_precision"].get<double>(),
                100 * c["prior_precision"].get<double>(), (long long)c["actual"].get<int64_t>());
}

// The last round's cells as a table: per signal and attack, top-1 / top-10 per layer and chance.
void print_activations_table(const nlohmann::json& report) {
  const int64_t last = report["rounds"].back().get<int64_t>();
  std::printf("\nwhat party %d (an expert host) recovers of the other parties' tokens, round %lld\n",
              report["observer"].get<int>(), (long long)last);
  std::printf("%-24s %-18s %6s %8s %8s %10s %10s %7s\n", "signal", "attack", "layer", "top-1", "top-10",
              "chance-1", "chance-10", "rows");
  for (const auto& c : report["cells"]) {
    if (c["round"].get<int64_t>() != last) continue;
    std::printf("%-24s %-18s %6d %7.1f%% %7.1f%% %9.1f%% %9.1f%% %7lld\n", c["signal"].get<std::string>().c_str(),
                c["attack"].get<std::string>().c_str(), c["layer"].get<int>(), 100 * c["top1"].get<double>(),
                100 * c["top10"].get<double>(), 100 * c["chance_top1"].get<double>(),
                100 * c["chance_top10"].get<double>(), (long long)c["rows"].get<int64_t>());
  }
  std::printf("\nthe host links a victim's rows across layers by the residual stream (round %lld):\n", (long long)last);
  std::printf("%-10s %10s %10s %10s %10s %7s\n", "layers", "accuracy", "link none", "precision", "recall", "rows");
  for (const auto& c : report["links"])
    if (c["round"].get<int64_t>() == last)
      std::printf("%3d -> %-3d %9.1f%% %9.1f%% %9.1f%% %9.1f%% %7lld\n", c["from_layer"].get<int>(), c["layer"].get<int>(),
                  100 * c["accuracy"].get<double>(), 100 * c["baseline"].get<double>(),
                  100 * c["precision"].get<double>(), 100 * c["recall"].get<double>(), (long long)c["rows"].get<int64_t>());
  std::printf("\nover training (best attack per signal, mean over layers, top-1):\n%-8s", "round");
  const char* signals[] = {"states", "gradients", "expert ids", "expert ids across layers"};
  for (const char* s : signals) std::printf(" %24s", s);
  std::printf("\n");
  for (const auto& r : report["rounds"]) {
    std::printf("%-8lld", (long long)r.get<int64_t>());
    for (const char* s : signals) {
      std::map<std::string, std::pair<double, int>> by_attack;
      for (const auto& c : report["cells"])
        if (c["round"] == r && c["signal"] == s) {
          auto& [sum, n] = by_attack[c["attack"].get<std::string>()];
          sum += c["top1"].get<double>();
          ++n;
        }
      double best = 0;
      for (const auto& [a, v] : by_attack) best = std::max(best, v.first / v.second);
      std::printf(" %23.1f%%", 100 * best);
    }
    std::printf("\n");
  }
}

void print_table(const nlohmann::json& report) {
  if (report.value("exchange", std::string("activations")) == "weights") print_weights_table(report);
  else print_activations_table(report);
  if (!report["membership"].empty()) {
    std::printf("\nmembership inference (AUC; 0.5 = no leak): the victim's training windows vs its held-out ones\n");
    std::printf("%-7s %-32s %6s %10s %11s\n", "victim", "model", "steps", "loss", "calibrated");
    for (const auto& c : report["membership"])
      std::printf("%-7d %-32s %6lld %10.3f %11.3f\n", c["victim"].get<int>(), c["model"].get<std::string>().c_str(),
                  (long long)c["trained_steps"].get<int64_t>(), c["auc_loss"].get<double>(),
                  c["auc_calibrated"].get<double>());
  }
  if (report.contains("secrets") && report["secrets"]["patterns"].get<int>() > 0) print_secrets(report["secrets"]);
  for (const auto& [mode, cells] : report["bag_of_words"].items()) {
    double p = 0, r = 0, chance = 0, prior = 0;
    for (const auto& c : cells) {
      p += c["precision"].get<double>();
      r += c["recall"].get<double>();
      chance += c["chance_precision"].get<double>();
      prior += c["prior_precision"].get<double>();
    }
    const double n = (double)std::max<size_t>(1, cells.size());
    std::printf("\nfederated server, %s: bag of words of each party's round, precision %.1f%% (chance %.1f%%, the "
                "public round's tokens %.1f%%), recall %.1f%% over %zu updates\n", mode.c_str(), 100 * p / n,
                100 * chance / n, 100 * prior / n, 100 * r / n, cells.size());
  }
}

}  // namespace

int cmd_audit(int argc, char** argv) {
  try {
    std::string run, out;
    pcmoe::eval::AuditOptions opt;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--mlp-every-round") {
        opt.mlp_every_round = true;
        continue;
      }
      if (a != "--run" && a != "--out" && a != "--fed-run" && a != "--public-windows" && a != "--secrets" &&
          a != "--secrets-regex")
        throw AuditUsageError("unknown argument '" + a + "'");
      if (i + 1 >= argc) throw AuditUsageError(a + " needs a value");
      const std::string v = argv[++i];
      if (a == "--run") run = v;
      else if (a == "--out") out = v;
      else if (a == "--fed-run") opt.fed_runs.push_back(v);
      else if (a == "--secrets") {
        const auto lines = pcmoe::eval::read_secrets(v);
        opt.secrets.insert(opt.secrets.end(), lines.begin(), lines.end());
      } else if (a == "--secrets-regex") {
        try {
          std::regex check(v);
        } catch (const std::regex_error& e) {
          throw AuditUsageError("--secrets-regex '" + v + "' is not a valid pattern: " + e.what());
        }
        opt.secrets.push_back({v, true});
      }
      else {
        size_t used = 0;
        int n = 0;
        try {
          n = std::stoi(v, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != v.size() || n < 16) throw AuditUsageError("--public-windows expects an integer >= 16, got '" + v + "'");
        opt.public_windows = n;
      }
    }
    if (run.empty()) throw AuditUsageError("missing --run");
    if (out.empty()) throw AuditUsageError("missing --out");
    namespace fs = std::filesystem;
    if (!fs::exists(fs::path(run) / "audit" / "recording.bin") && fs::exists(fs::path(run) / "party0" / "audit")) {
      std::fprintf(stderr, "audit: gathering the deployed parties' recordings and views into %s/audit\n", run.c_str());
      pcmoe::gather_deployed_recording(run);
    }
    const nlohmann::json report = pcmoe::eval::run_audit(run, out, opt);
    print_table(report);
    std::printf("\nwrote %s/audit.json (%.0f s)\n", out.c_str(), report["seconds"].get<double>());
    return 0;
  } catch (const AuditUsageError& e) {
    std::fprintf(stderr, "pcmoe audit: %s\n\n%s", e.what(), kAuditUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcmoe audit: error: %s\n", e.what());
    return 1;
  }
}
