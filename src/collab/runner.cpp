#include "collab/runner.h"

#include <algorithm>
#include <cstdio>

#include "collab/curves_plot.h"
#include "collab/dp_batches.h"
#include "collab/run_shared.h"
#include "common/stopwatch.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"

namespace pcmoe {
namespace {

class Context final : public CollabContext {
 public:
  Context(Shared& sh, const CollabData& data) : sh_(sh), data_(data) {}
  const RunConfig& config() const override { return sh_.cfg; }
  int n_parties() const override { return (int)sh_.parties.size(); }
  int64_t tokens_per_turn() const override { return sh_.tokens_per_turn; }
  void fill_turn(int party, int64_t step, int32_t* windows) const override {
    pcmoe::fill_turn(sh_.cfg, sh_.parties[party], step, windows);
  }
  nlohmann::json evaluate(Model& model, int party) const override { return evaluate_everywhere(model, sh_, party); }
  double curve_loss(Model& model) const override { return pcmoe::curve_loss(model, sh_); }
  bool curve_due(int64_t steps) const override { return pcmoe::curve_due(sh_, steps); }
  std::string out_dir() const override { return sh_.out_dir.string(); }
  void save_model(const std::string& name, const ParamSet& params, int64_t step) const override {
    save_checkpoint((sh_.out_dir / name / "checkpoint").string(), to_json(sh_.cfg), params, nullptr, step, sh_.tokenizer_model);
  }
  void log(const nlohmann::json& line) override { sh_.metrics << line.dump() << "\n"; }
  void progress(const std::string& mode, int64_t done, int64_t total, float loss, double seconds) const override {
    pcmoe::progress(mode.c_str(), done, total, loss, seconds);
  }
  data::TokenStream public_tokens(const std::vector<std::string>& categories) const override {
    return pcmoe::public_tokens(sh_.cfg, data_, categories);
  }

 private:
  Shared& sh_;
  const CollabData& data_;
};

// The figure's title and notes: what was trained, on whose data, what its axes mean.
CurvePlotText curve_text(const Shared& sh, const nlohmann::json& report) {
  const int n = (int)sh.parties.size();
  CurvePlotText t;
  t.title = "pcmoe collab: validation loss while " + std::to_string(n) + " parties train (" +
            std::to_string(sh.rounds) + " turns of " + std::to_string(sh.tokens_per_turn) + " tokens each)";
  for (int p = 0; p < n; ++p) {
    std::string cats;
    for (const std::string& c : sh.parties[p].categories) cats += (cats.empty() ? "" : ", ") + c;
    t.notes.push_back("party " + std::to_string(p) + " holds (" + sh.cfg.data.corpus + "): " + cats);
  }
  std::string per_party;
  for (int k : sh.val_parts) per_party += (per_party.empty() ? "" : "/") + std::to_string(k);
  t.notes.push_back("pooled: a model's mean cross-entropy on all " + std::to_string(sh.n_pooled_val) +
                    " validation windows of " + std::to_string(sh.cfg.model.seq_len) + " tokens (" + per_party +
                    " from the parties' held-out documents), the same windows as the table's pooled column;");
  const int every = sh.cfg.train.eval_every;
  t.notes.push_back("pc-moe and local-only: the mean over the parties' own models. Points at the start, " +
                    (every > 0 ? "every " + std::to_string(every) + " turns per party " : std::string()) +
                    "and the end; the last is the table's.");
  std::string silent;
  for (const auto& [m, c] : report["curves"].items())
    if (c.back()["bytes_sent_per_party"].get<double>() == 0) silent += (silent.empty() ? "" : ", ") + m;
  if (!silent.empty()) t.notes.push_back("bytes: as the transport counts them; " + silent + " send nothing (left panel only).");
  return t;
}

// The report's per-party table (validation loss on its own data and on the pooled data, for each
// mode) and its learning curves, local-only's as the mean over the parties' own full models.
void add_tables(nlohmann::json& report, const Shared& sh, const std::map<std::string, ExtraMode>& extra_modes) {
  const int n = (int)sh.parties.size();
  nlohmann::json table = nlohmann::json::array();
  for (int p = 0; p < n; ++p) {
    nlohmann::json row = {{"party", p}, {"categories", sh.parties[p].categories}, {"val_windows", sh.parties[p].n_val}};
    const auto& modes = report["modes"];
    if (modes.contains("pc-moe")) row["pc-moe"] = modes["pc-moe"]["parties"][p];
    if (modes.contains("centralised")) row["centralised"] = modes["centralised"]["eval"][p];
    if (modes.contains("local-only-full")) row["local-only-full"] = modes["local-only-full"][p]["eval"];
    if (modes.contains("local-only-budget")) row["local-only-budget"] = modes["local-only-budget"][p]["eval"];
    for (const auto& [m, run] : extra_modes)
      if (modes.contains(m)) row[m] = modes[m]["parties"][p];
    table.push_back(row);
  }
  report["per_party"] = table;
  nlohmann::json curves = nlohmann::json::object();
  for (const auto& [m, run] : report["modes"].items()) {
    if (m == "local-only-budget") continue;
    if (m != "local-only-full") {
      curves[m] = run["curve"];
      continue;
    }
    nlohmann::json mean = run[0]["curve"];
    for (size_t i = 0; i < mean.size(); ++i) {
      double loss = 0;
      for (const auto& party : run) loss += party["curve"][i]["val_loss_pooled"].get<double>() / run.size();
      mean[i]["val_loss_pooled"] = loss;
    }
    curves["local-only"] = mean;
  }
  report["curves"] = curves;
}

}  // namespace

nlohmann::json run_collab(const RunConfig& cfg, const std::string& out_dir,
                          const std::map<std::string, ExtraMode>& extra_modes) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  const int n = cfg.parties.n_parties;
  set_num_threads(tc.threads);
  const auto t_start = clock_type::now();
  for (const std::string& m : cfg.collab.modes) {
    if (m != "pc-moe" && m != "centralised" && m != "local-only" && !extra_modes.count(m))
      throw std::runtime_error("mode '" + m + "' is not available to this runner");
    if (cfg.privacy.enabled && extra_modes.count(m))
      throw std::runtime_error("mode '" + m + "' does not run DP-SGD: the privacy section applies to pc-moe, "
                               "centralised and local-only");
  }

  CollabData data = load_collab_data(cfg);
  Shared sh{cfg, std::move(data.parties), {}, 0, std::ofstream(), data.tokens_per_turn, out_dir,
            data.tokenizer_model, {}, {}, {}, 0, 0, {}, {}, 0, 0, 0, {}};
  sh.rounds = tc.steps;
  if (cfg.privacy.enabled) {
    sh.dp_model = mc;
    for (int p = 0; p < n; ++p) {
      sh.units.push_back(make_privacy_units(sh.parties[p].train.tokens, mc.seq_len, cfg.privacy.unit, data.bos_id));
      sh.plans.push_back(plan_dp(cfg.privacy, sh.units[p].n_units(), tc.steps));
      const DpPlan& d = sh.plans[p];
      sh.batches.push_back(sampler_for(d, party_seed(cfg, p)));
      std::fprintf(stderr, "party %d DP-SGD: %d units, q %.4g, noise multiplier %.4f, clip %.4g, delta %.3g, epsilon %.3f after %lld turns | %s\n",
                   p, d.n_units, d.q, d.sigma, d.clip, d.delta, d.epsilon_after(d.budget_steps), (long long)d.budget_steps,
                   d.randomness().c_str());
      sh.rounds = std::min(sh.rounds, d.budget_steps);
      sh.dp_max_batch = std::max({sh.dp_max_batch, tc.batch_size, sh.units[p].max_windows()});
    }
    if (!sh.plans[0].aux_per_unit) sh.dp_model.aux_loss_weight = 0;
    if (sh.rounds < tc.steps)
      std::fprintf(stderr, "DP-SGD: the tightest party budget allows %lld rounds of %d; stopping there\n",
                   (long long)sh.rounds, tc.steps);
  }
  fs::create_directories(out_dir);  // after the plans: a refused privacy section writes nothing
  sh.metrics.open(fs::path(out_dir) / "metrics.jsonl", std::ios::trunc);
  // The pooled validation set: every party's own windows, each party weighted alike.
  for (const PartyStreams& ps : sh.parties) {
    sh.pooled_val.insert(sh.pooled_val.end(), ps.val_windows.begin(), ps.val_windows.end());
    sh.n_pooled_val += ps.n_val;
    sh.val_parts.push_back(ps.n_val);
  }

  auto wants = [&](const char* m) { return std::find(cfg.collab.modes.begin(), cfg.collab.modes.end(), m) != cfg.collab.modes.end(); };
  // With DP-SGD a party's batches are Poisson draws: its expected tokens.
  int64_t tokens_per_party = sh.rounds * sh.tokens_per_turn;
  if (private_run(sh)) {
    double expected = 0;
    for (int p = 0; p < n; ++p)
      expected += sh.rounds * sh.plans[p].q * sh.units[p].n_windows() * mc.seq_len / n;
    tokens_per_party = (int64_t)expected;
  }
  nlohmann::json report = {{"parties", n}, {"tokens_per_party", tokens_per_party}, {"modes", nlohmann::json::object()}};
  // Every mode trains party p's round r on the same draw: one record per party for the audit.
  for (int p = 0; private_run(sh) && p < n; ++p) {
    DpBatches b{cfg.privacy.unit, sh.units[p].n_units(), {}};
    for (int64_t round = 0; round < sh.rounds; ++round) b.rounds.push_back(sh.batches[p].sample(round, b.n_units, sh.plans[p].q));
    save_dp_batches(dp_batches_file(out_dir, p), b);
  }
  std::vector<int> everyone(n);
  for (int p = 0; p < n; ++p) everyone[p] = p;
  if (wants("pc-moe")) report["modes"]["pc-moe"] = run_pcmoe(sh);
  if (wants("centralised")) report["modes"]["centralised"] = run_solo(sh, "centralised", mc, everyone, -1, "centralised", true);
  if (wants("local-only")) {
    ModelConfig budget = mc;  // the backbone and this party's share of the experts
    budget.n_experts = std::max(1, mc.n_experts / n);
    budget.top_k = std::min(mc.top_k, budget.n_experts);
    nlohmann::json full = nlohmann::json::array(), small = nlohmann::json::array();
    for (int p = 0; p < n; ++p) {
      // the full local-only models are kept: the audit's membership inference targets them too
      full.push_back(run_solo(sh, ("local-only full, party " + std::to_string(p)).c_str(), mc, {p}, p,
                              "local-only/party" + std::to_string(p), true));
      small.push_back(run_solo(sh, ("local-only budget, party " + std::to_string(p)).c_str(), budget, {p}, p, "", false));
    }
    report["modes"]["local-only-full"] = full;
    report["modes"]["local-only-budget"] = small;
    report["local_only_budget_experts"] = budget.n_experts;
  }
  Context context(sh, data);
  for (const std::string& m : cfg.collab.modes)
    if (extra_modes.count(m)) report["modes"][m] = extra_modes.at(m)(context);

  add_tables(report, sh, extra_modes);
  if (report["modes"].contains("pc-moe") && report["modes"].contains("centralised")) {
    size_t largest = 0;
    for (const auto& pp : report["modes"]["pc-moe"]["parties"]) largest = std::max(largest, pp["memory"]["total"].get<size_t>());
    report["peak_memory_ratio"] = (double)largest / report["modes"]["centralised"]["memory"]["total"].get<double>();
  }
  if (private_run(sh)) {
    report["privacy"] = nlohmann::json::array();
    for (const DpPlan& d : sh.plans) report["privacy"].push_back(d.report(sh.rounds));
  }
  report["rounds"] = sh.rounds;
  report["peak_rss_bytes"] = peak_rss_bytes();
  report["wall_seconds"] = seconds_since(t_start);
  report["cpu_seconds"] = process_cpu_seconds();
  report["evaluation"] = {{"seconds", sh.eval_seconds}, {"cpu_seconds", sh.eval_cpu_seconds}, {"windows", sh.eval_windows}};
  report["config"] = to_json(cfg);
  std::ofstream(fs::path(out_dir) / "report.json") << report.dump(2) << "\n";
  write_curve_plot(report["curves"], out_dir, curve_text(sh, report));
  return report;
}

}  // namespace pcmoe
