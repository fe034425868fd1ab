// `pcmoe dp-budget`: the privacy budget of DP-SGD with Poisson sampling (src/privacy/accountant.h).
// Two questions: the ε that a noise multiplier σ spends (--sigma), or the σ that a target ε needs
// (--epsilon), at sampling rate q, T steps and δ. Given the number of privacy units N, δ follows
// a run's rule: 1/(10N) when not given, and δ >= 1/N refused unless --allow-weak-delta.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "privacy/accountant.h"

using namespace pcmoe::privacy;

namespace {

constexpr const char* kDpBudgetUsage =
    "usage: pcmoe dp-budget (--sigma S | --epsilon E) --q Q --steps T (--delta D | --units N) [--json]\n"
    "  --sigma S    noise multiplier (noise std / clipping norm) > 0: prints the epsilon spent\n"
    "  --epsilon E  target epsilon > 0: prints the calibrated noise multiplier\n"
    "  --q Q        Poisson sampling rate in (0, 1] (expected batch size / dataset size)\n"
    "  --steps T    number of DP-SGD steps, an integer >= 1\n"
    "  --delta D    delta in (0, 1)\n"
    "  --units N    the privacy units of the data: delta defaults to 1/(10N), and a delta >= 1/N is\n"
    "               refused (a run that leaks one unit whole meets it) unless --allow-weak-delta\n"
    "  --json       print one JSON object instead of text\n";

struct DpUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double parse_number(const std::string& key, const std::string& text) {
  double v = 0;
  size_t used = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(v))
    throw DpUsageError(key + " expects a finite number, got '" + text + "'");
  return v;
}

int64_t parse_int(const std::string& key, const std::string& text) {
  long long v = 0;
  size_t used = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw DpUsageError(key + " expects an integer, got '" + text + "'");
  return v;
}

// Inputs, orders and sigmas: up to 15 significant digits (a calibrated sigma is a short binary
// fraction, printed exactly); epsilons: 10 decimals (Opacus's published precision).
std::string fmt(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}
std::string fmt_eps(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.10f", v);
  return buf;
}

void warn_if_grid_edge(const EpsilonResult& r, const char* what) {
  const auto orders = default_orders();
  if (r.best_order == orders.front() || r.best_order == orders.back())
    std::fprintf(stderr,
                 "pcmoe dp-budget: note: the %s optimum is at order %s, the edge of the order grid "
                 "(%s..%s); epsilon may be loose there\n",
                 what, fmt(r.best_order).c_str(), fmt(orders.front()).c_str(), fmt(orders.back()).c_str());
}

}  // namespace

int cmd_dp_budget(int argc, char** argv) {
  try {
    std::optional<double> sigma, epsilon, q, delta;
    std::optional<int64_t> steps, units;
    bool json = false, allow_weak_delta = false;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--json" || a == "--allow-weak-delta") {
        (a == "--json" ? json : allow_weak_delta) = true;
        continue;
      }
      if (a != "--sigma" && a != "--epsilon" && a != "--q" && a != "--steps" && a != "--delta" && a != "--units")
        throw DpUsageError("unknown argument '" + a + "'");
      if (i + 1 >= argc) throw DpUsageError(a + " needs a value");
      const std::string v = argv[++i];
      if (a == "--sigma") sigma = parse_number(a, v);
      else if (a == "--epsilon") epsilon = parse_number(a, v);
      else if (a == "--q") q = parse_number(a, v);
      else if (a == "--delta") delta = parse_number(a, v);
      else if (a == "--units") units = parse_int(a, v);
      else steps = parse_int(a, v);
    }
    if (sigma && epsilon) throw DpUsageError("give either --sigma or --epsilon, not both");
    if (!sigma && !epsilon) throw DpUsageError("give --sigma (to get epsilon) or --epsilon (to get sigma)");
    if (!q) throw DpUsageError("missing --q");
    if (!steps) throw DpUsageError("missing --steps");
    if (units && *units < 1) throw DpUsageError("--units must be at least 1, got " + std::to_string(*units));
    if (!delta && !units) throw DpUsageError("missing --delta (or --units, for the default 1/(10N))");
    if (!delta) delta = default_delta(*units);
    if (sigma && !(*sigma > 0)) throw DpUsageError("--sigma must be > 0, got " + fmt(*sigma));
    if (epsilon && !(*epsilon > 0)) throw DpUsageError("--epsilon must be > 0, got " + fmt(*epsilon));
    if (!(*q > 0 && *q <= 1)) throw DpUsageError("--q must be in (0, 1], got " + fmt(*q));
    if (*steps < 1) throw DpUsageError("--steps must be at least 1, got " + std::to_string(*steps));
    if (!(*delta > 0 && *delta < 1)) throw DpUsageError("--delta must be in (0, 1), got " + fmt(*delta));
    if (units) require_strong_delta(*delta, *units, allow_weak_delta, "--allow-weak-delta");

    nlohmann::json out = {{"q", *q}, {"steps", *steps}, {"delta", *delta}};
    if (units) out["units"] = *units;
    if (sigma) {
      const EpsilonResult improved = epsilon_rdp(*q, *sigma, *steps, *delta, Conversion::kImproved);
      const EpsilonResult classic = epsilon_rdp(*q, *sigma, *steps, *delta, Conversion::kClassic);
      warn_if_grid_edge(improved, "improved");
      warn_if_grid_edge(classic, "classic");
      if (json) {
        out["question"] = "epsilon";
        out["sigma"] = *sigma;
        out["improved"] = {{"epsilon", improved.epsilon}, {"best_order", improved.best_order}};
        out["classic"] = {{"epsilon", classic.epsilon}, {"best_order", classic.best_order}};
        std::printf("%s\n", out.dump(2).c_str());
      } else {
        std::printf("DP-SGD, Poisson sampling q %s, noise multiplier %s, %lld steps, delta %s (RDP accountant)\n",
                    fmt(*q).c_str(), fmt(*sigma).c_str(), (long long)*steps, fmt(*delta).c_str());
        std::printf("epsilon %s  (improved conversion, Balle et al. 2020; best order %s)\n",
                    fmt_eps(improved.epsilon).c_str(), fmt(improved.best_order).c_str());
        std::printf("epsilon %s  (classic conversion; best order %s)\n", fmt_eps(classic.epsilon).c_str(),
                    fmt(classic.best_order).c_str());
      }
    } else {
      const double s_improved = calibrate_sigma(*epsilon, *delta, *q, *steps, Conversion::kImproved);
      const EpsilonResult improved = epsilon_rdp(*q, s_improved, *steps, *delta, Conversion::kImproved);
      // The classic bound is looser: a target the improved one reaches may be out of its reach.
      std::optional<double> s_classic;
      std::string classic_error;
      try {
        s_classic = calibrate_sigma(*epsilon, *delta, *q, *steps, Conversion::kClassic);
      } catch (const std::runtime_error& e) {
        classic_error = e.what();
      }
      std::optional<EpsilonResult> classic;
      if (s_classic) classic = epsilon_rdp(*q, *s_classic, *steps, *delta, Conversion::kClassic);
      warn_if_grid_edge(improved, "improved");
      if (classic) warn_if_grid_edge(*classic, "classic");
      if (json) {
        out["question"] = "sigma";
        out["target_epsilon"] = *epsilon;
        out["improved"] = {{"sigma", s_improved}, {"epsilon", improved.epsilon}, {"best_order", improved.best_order}};
        if (classic)
          out["classic"] = {{"sigma", *s_classic}, {"epsilon", classic->epsilon}, {"best_order", classic->best_order}};
        else
          out["classic"] = {{"sigma", nullptr}, {"error", classic_error}};
        std::printf("%s\n", out.dump(2).c_str());
      } else {
        std::printf("DP-SGD, Poisson sampling q %s, target epsilon %s, %lld steps, delta %s (RDP accountant)\n",
                    fmt(*q).c_str(), fmt(*epsilon).c_str(), (long long)*steps, fmt(*delta).c_str());
        std::printf("sigma %s  (improved conversion: epsilon %s at best order %s)\n", fmt(s_improved).c_str(),
                    fmt_eps(improved.epsilon).c_str(), fmt(improved.best_order).c_str());
        if (classic)
          std::printf("sigma %s  (classic conversion: epsilon %s at best order %s)\n", fmt(*s_classic).c_str(),
                      fmt_eps(classic->epsilon).c_str(), fmt(classic->best_order).c_str());
        else
          std::printf("sigma -  (classic conversion: %s)\n", classic_error.c_str());
      }
    }
    return 0;
  } catch (const DpUsageError& e) {
    std::fprintf(stderr, "pcmoe dp-budget: %s\n%s", e.what(), kDpBudgetUsage);
    return 2;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "pcmoe dp-budget: %s\n%s", e.what(), kDpBudgetUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcmoe dp-budget: error: %s\n", e.what());
    return 1;
  }
}
