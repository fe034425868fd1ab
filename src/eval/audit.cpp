#include "eval/audit.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>

#include "collab/expert_host.h"
#include "collab/recorder.h"
#include "collab/runner.h"
#include "collab/weights_wire.h"
#include "common/stopwatch.h"
#include "eval/audit_membership.h"
#include "eval/audit_rows.h"
#include "eval/routing_trace.h"
#include "eval/secrets.h"
#include "eval/weights_attack.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace pcmoe::eval {
namespace {

// Standardises columns of x[n, C] by the public data's mean and std (the attacker's statistics).
struct Standardiser {
  std::vector<float> mean, inv_std;
  Standardiser(const std::vector<float>& x, int C) : mean(C, 0.f), inv_std(C, 0.f) {
    const size_t n = x.size() / C;
    std::vector<double> s(C, 0), ss(C, 0);
    for (size_t i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) s[c] += x[i * C + c], ss[c] += (double)x[i * C + c] * x[i * C + c];
    for (int c = 0; c < C; ++c) {
      const double m = s[c] / n, var = std::max(ss[c] / n - m * m, 1e-12);
      mean[c] = (float)m;
      inv_std[c] = (float)(1 / std::sqrt(var));
    }
  }
  std::vector<float> apply(const std::vector<float>& x) const {
    std::vector<float> y(x);
    const size_t C = mean.size();
    for (size_t i = 0; i < y.size(); ++i) y[i] = (y[i] - mean[i % C]) * inv_std[i % C];
    return y;
  }
};

// Cosine of each row of x[n, C] with each token embedding, times `sign`.
std::vector<float> embedding_scores(const std::vector<float>& x, const std::vector<float>& wte, int C, float sign) {
  const int n = (int)(x.size() / C), V = (int)(wte.size() / C);
  std::vector<float> xn(x), en(wte), out((size_t)n * V);
  for (int i = 0; i < n; ++i) unit_scale(xn.data() + (size_t)i * C, C);
  for (int v = 0; v < V; ++v) unit_scale(en.data() + (size_t)v * C, C);
  matmul_nt(out.data(), xn.data(), en.data(), n, V, C, false);
  for (float& s : out) s *= sign;
  return out;
}

// The probe's scores of test_x[n, C] and, into `own`, of the first own_rows of its training rows
// (how well it does on text the attacker knows).
std::vector<float> probe_scores(const std::vector<float>& train_x, const std::vector<int32_t>& train_y,
                                const std::vector<float>& test_x, int C, int V, const ProbeConfig& pc, int own_rows,
                                std::vector<float>& own) {
  Probe probe(C, V, pc);
  probe.train(train_x.data(), train_y.data(), (int)train_y.size());
  std::vector<float> out(test_x.size() / C * V);
  probe.logits(test_x.data(), (int)(test_x.size() / C), out.data());
  own.resize((size_t)own_rows * V);
  probe.logits(train_x.data(), own_rows, own.data());
  return out;
}

// Adds an attack's top-1 guesses at one layer to its reconstruction, trusted as much as the attack
// scores on the attacker's own public rows there (`own` scores of labels own_labels).
void add_guesses(std::pair<Reconstruction, Reading>& into, int layer, const std::vector<float>& scores,
                 const std::vector<float>& own, const int32_t* own_labels, int V, const std::vector<Slot>& at,
                 const std::vector<int64_t>& group) {
  const double trust = topk_hits(own.data(), own_labels, (int)(own.size() / V), V).top1;
  const std::vector<int32_t> guess = top1(scores, V);
  for (size_t i = 0; i < guess.size(); ++i) into.first.add(at[i], guess[i], trust);
  if (trust <= into.second.trust) return;
  into.second = {trust, layer, guess, group, {}};
  for (const Slot& s : at) into.second.victim.push_back(s.victim);
}

nlohmann::json cell(const char* attack, const char* signal, int layer, int64_t round, const TopK& hit, const TopK& chance) {
  return {{"attack", attack}, {"signal", signal},     {"layer", layer},
          {"round", round},   {"top1", hit.top1},     {"top10", hit.top10},
          {"chance_top1", chance.top1}, {"chance_top10", chance.top10}, {"rows", hit.n}};
}

// The routing-trace attack (routing_trace.h): link thresholds and P(token | expert tuple) from
// the attacker's own traces of public text; the victims' traces linked and decoded with them.
// Adds the decoding's cells to `cells` and the linking's scores to `links`.
void routing_trace_cells(const std::vector<Trace>& pub, const std::vector<Trace>& vic, const std::vector<int>& layers,
                         int64_t round, int C, int V, nlohmann::json& cells, nlohmann::json& links) {
  const int L = (int)layers.size();
  RouteTable::Linking link{std::vector<float>(L, 1.f), std::vector<float>(L, 2.f)};
  auto candidates = [&](const std::vector<Trace>& traces, int m) {
    LinkCandidates all;
    for (const Trace& t : traces) {
      const LinkCandidates c = nearest_previous(t[m - 1], t[m], C, link.bands[m]);
      all.best.insert(all.best.end(), c.best.begin(), c.best.end());
      all.truth.insert(all.truth.end(), c.truth.begin(), c.truth.end());
      all.cosine.insert(all.cosine.end(), c.cosine.begin(), c.cosine.end());
    }
    return all;
  };
  for (int m = 1; m < L; ++m) {
    link.bands[m] = fit_place_band(pub, m);
    link.thresholds[m] = fit_link_threshold(candidates(pub, m));
    const LinkScore s = score_links(candidates(vic, m), link.thresholds[m]);
    links.push_back({{"layer", layers[m]}, {"from_layer", layers[m - 1]}, {"round", round},
                     {"band", link.bands[m]}, {"threshold", link.thresholds[m]}, {"accuracy", s.accuracy},
                     {"baseline", s.baseline}, {"precision", s.precision}, {"recall", s.recall}, {"rows", s.rows}});
  }
  RouteTable table(L, V);
  for (const Trace& t : pub) table.add(t, link, C);
  for (int m = 0; m < L; ++m) {
    std::vector<float> scores;
    std::vector<int32_t> labels;
    for (const Trace& t : vic) {
      const std::vector<float> s = table.scores(t, link, C, m);
      scores.insert(scores.end(), s.begin(), s.end());
      labels.insert(labels.end(), t[m].token.begin(), t[m].token.end());
    }
    if (labels.empty()) continue;
    cells.push_back(cell("routing-trace", "expert ids across layers", layers[m], round,
                         topk_hits(scores.data(), labels.data(), (int)labels.size(), V), chance_level(labels, V)));
  }
}

// The rounds the observer's views were saved at (view_r<round>), in order.
std::vector<int64_t> viewed_rounds(const fs::path& rec_dir) {
  std::vector<int64_t> rounds;
  for (const auto& entry : fs::directory_iterator(rec_dir)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("view_r", 0) == 0) rounds.push_back(std::stoll(name.substr(6)));
  }
  std::sort(rounds.begin(), rounds.end());
  if (rounds.empty()) throw std::runtime_error("'" + rec_dir.string() + "' holds no observer views (view_r<round>)");
  return rounds;
}

// The scorer's truth for the per-string report: each victim's rebuilt batch of this round, and
// every recorded row's position in it checked against the token recorded there.
void check_rows_against_batches(SecretsAudit& secrets, const RunConfig& cfg, const Recording& rec,
                                const CollabData& data, int64_t round, const std::map<int, Rows>& vic) {
  std::vector<int32_t> batch((size_t)cfg.train.grad_accum * cfg.train.batch_size * (cfg.model.seq_len + 1));
  for (int victim = 0; victim < rec.n_parties; ++victim) {
    if (victim == rec.observer) continue;
    fill_turn(cfg, data.parties[victim], round, batch.data());
    secrets.set_batch(round, victim, batch);
  }
  for (const auto& [layer, v] : vic) {
    for (int i = 0; i < v.n(); ++i) secrets.check(v.input_at[i], v.input[i]);
    for (size_t i = 0; i < v.target.size(); ++i) secrets.check(v.target_at[i], v.target[i]);
  }
}

// The federated server's attack runs where the server decodes (collab's fed modes); its results
// are in each run's report, per mode.
nlohmann::json gather_bag_of_words(const std::vector<fs::path>& runs) {
  nlohmann::json bag_of_words = nlohmann::json::object();
  for (const fs::path& run : runs) {
    const fs::path report_path = run / "report.json";
    if (!fs::exists(report_path)) continue;
    nlohmann::json report = nlohmann::json::parse(std::ifstream(report_path));
    for (const auto& [mode, r] : report["modes"].items())  // none in a deployment's report
      if (r.contains("audit_bag_of_words")) bag_of_words[mode] = r["audit_bag_of_words"];
  }
  return bag_of_words;
}

// The run's config, from its first recorded view, refused unless it is the recording's.
RunConfig recorded_config(const fs::path& rec_dir, const Recording& rec, int64_t first_round) {
  const fs::path first_view = rec_dir / ("view_r" + std::to_string(first_round));
  RunConfig cfg = read_checkpoint_config(first_view.string());
  if (run_fingerprint(read_config_json((first_view / "config.json").string())) != rec.fingerprint)
    throw std::runtime_error("the recording in '" + rec_dir.string() + "' was made by another config than the run's");
  return cfg;
}

}  // namespace

nlohmann::json run_audit(const std::string& run_dir, const std::string& out_dir, const AuditOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path rec_dir = fs::path(run_dir) / "audit";
  if (!fs::exists(rec_dir / "recording.bin"))
    throw std::runtime_error("'" + run_dir + "' has no recording (audit/recording.bin): train it with an \"audit\" "
                             "section in the config (docs/audit.md)");
  const Recording rec = read_recording(rec_dir.string());
  const std::vector<int64_t> rounds = viewed_rounds(rec_dir);
  const RunConfig cfg = recorded_config(rec_dir, rec, rounds[0]);
  const ModelConfig& mc = cfg.model;
  const int C = mc.d_model, V = mc.vocab_size, T = mc.seq_len;
  const std::vector<int> hosted = hosted_experts(mc.n_experts, rec.observer, rec.n_parties);

  // Public text: the observer's own training documents (genres no victim holds).
  std::fprintf(stderr, "audit: loading the observer's public text\n");
  // Weights mode sends the host no hidden state or output gradient: only its experts' gradient sums.
  const bool weights = parse_exchange(cfg.collab.exchange) == Exchange::kWeights;
  if (weights && !opt.secrets.empty())
    throw std::runtime_error("--secrets scores the attacks on hidden states and output gradients; weights mode sends none");
  // Outside DP-SGD the scorer rebuilds the victims' batches, for the per-string report and samples.
  const bool rebuild = !cfg.privacy.enabled && !weights;
  if (!rebuild && !opt.secrets.empty())
    throw std::runtime_error("--secrets needs batches the config draws; DP-SGD's Poisson batches are not rebuilt");
  const CollabData data = load_collab_data(cfg, rebuild || weights ? -1 : rec.observer);
  const std::vector<int32_t>& stream = data.parties[rec.observer].train.tokens;
  const int n_windows = std::min<int>(opt.public_windows, (int)((stream.size() - 1) / T));
  if (n_windows < 16) throw std::runtime_error("the observer holds too little text to train the attacks");
  std::vector<int32_t> windows;
  for (int w = 0; w < n_windows; ++w)
    windows.insert(windows.end(), stream.begin() + (size_t)w * T, stream.begin() + (size_t)w * T + T + 1);

  std::unique_ptr<SecretsAudit> secrets;
  if (rebuild) secrets = std::make_unique<SecretsAudit>(opt.secrets, data.tokenizer.token_texts(), stream, T);
  nlohmann::json cells = nlohmann::json::array(), links = nlohmann::json::array();
  for (size_t ri = 0; !weights && ri < rounds.size(); ++ri) {  // the attacks on activations
    const int64_t round = rounds[ri];
    const bool mlp = opt.mlp_every_round || ri + 1 == rounds.size();
    const PublicView pub =
        public_view(cfg, (rec_dir / ("view_r" + std::to_string(round))).string(), windows, n_windows, hosted);
    const std::map<int, Rows> vic = victim_rows(cfg, rec, round);
    routing_trace_cells(pub.traces, victim_traces(cfg, rec, round), moe_layers(mc), round, C, V, cells, links);
    // Per (signal, attack): its guesses over every layer, placed by the truth's positions.
    std::map<std::pair<std::string, std::string>, std::pair<Reconstruction, Reading>> rebuilt;
    if (secrets) check_rows_against_batches(*secrets, cfg, rec, data, round, vic);
    for (const auto& [layer, v] : vic) {
      const Rows& p = pub.rows.at(layer);
      // The attacker's own public rows each attack is also scored on (its trust in a layer).
      const int own_rows = std::min(p.n(), 2048);
      const std::vector<float> own_state(p.state.begin(), p.state.begin() + (size_t)own_rows * C),
          own_grad(p.grad.begin(), p.grad.begin() + (size_t)own_rows * C);
      std::vector<float> own;
      // Hidden states -> input token.
      if (!v.input.empty()) {
        const TopK chance = chance_level(v.input, V);
        auto score = [&](const char* signal, const char* attack, const std::vector<float>& s) {
          cells.push_back(cell(attack, signal, layer, round, topk_hits(s.data(), v.input.data(), v.n(), V), chance));
          if (secrets)
            add_guesses(rebuilt[{signal, attack}], layer, s, own, p.input.data(), V, v.input_at, v.input_group);
        };
        if (secrets) own = embedding_scores(own_state, pub.wte, C, 1.f);
        score("states", "nearest-embedding", embedding_scores(v.state, pub.wte, C, 1.f));
        const Standardiser st(p.state, C);
        const std::vector<float> ptrain = st.apply(p.state), vtest = st.apply(v.state);
        score("states", "linear-probe", probe_scores(ptrain, p.input, vtest, C, V, opt.linear, own_rows, own));
        if (mlp) score("states", "mlp", probe_scores(ptrain, p.input, vtest, C, V, opt.mlp, own_rows, own));
        // The expert ids alone: P(token | this host's expert) from public text through the attacker's model.
        auto expert_scores = [&](const std::vector<int>& experts, int n) {
          std::vector<float> s((size_t)n * V);
          for (int i = 0; i < n; ++i) {
            const std::vector<int64_t>& counts = pub.routed.at(layer)[experts[i]];
            for (int t = 0; t < V; ++t) s[(size_t)i * V + t] = (float)counts[t];
          }
          return s;
        };
        if (secrets) own = expert_scores(p.expert, own_rows);
        score("expert ids", "routing", expert_scores(v.expert, v.n()));
      }
      // Output gradients -> target token.
      if (!v.target.empty()) {
        const TopK chance = chance_level(v.target, V);
        auto score = [&](const char* attack, const std::vector<float>& s) {
          cells.push_back(cell(attack, "gradients", layer, round, topk_hits(s.data(), v.target.data(), (int)v.target.size(), V), chance));
          if (secrets)
            add_guesses(rebuilt[{"gradients", attack}], layer, s, own, p.target.data(), V, v.target_at, v.target_group);
        };
        if (secrets) own = embedding_scores(own_grad, pub.wte, C, -1.f);
        score("nearest-embedding", embedding_scores(v.grad, pub.wte, C, -1.f));
        score("linear-probe", probe_scores(p.grad, p.target, v.grad, C, V, opt.linear, own_rows, own));
        if (mlp) score("mlp", probe_scores(p.grad, p.target, v.grad, C, V, opt.mlp, own_rows, own));
      }
    }
    if (secrets) {
      for (const auto& [key, r] : rebuilt) secrets->score(key.first, key.second, r.first, r.second);
      secrets->score_public_guess();
    }
    std::fprintf(stderr, "audit: round %lld done (%zu/%zu), %.0fs\n", (long long)round, ri + 1, rounds.size(),
                 seconds_since(t0));
  }
  const nlohmann::json weights_cells =
      weights ? weights_bag_of_words(run_dir, cfg, rec, rounds, data, windows, n_windows) : nlohmann::json::array();
  std::fprintf(stderr, "audit: membership inference against the released models\n");
  std::vector<fs::path> runs = {run_dir};
  runs.insert(runs.end(), opt.fed_runs.begin(), opt.fed_runs.end());
  const nlohmann::json membership =
      membership_cells(runs, rec.observer, rec.n_parties, rec_dir / ("view_r" + std::to_string(rounds[0])));
  const nlohmann::json bag_of_words = gather_bag_of_words(runs);
  nlohmann::json out = {{"run", run_dir},   {"observer", rec.observer},   {"rounds", rounds},
                        {"exchange", cfg.collab.exchange}, {"weights_bag_of_words", weights_cells},
                        {"public_windows", n_windows}, {"cells", cells}, {"links", links}, {"membership", membership},
                        {"bag_of_words", bag_of_words}};
  fs::create_directories(out_dir);
  if (secrets) {
    out["secrets"] = secrets->report();
    secrets->write_samples(out_dir);
  }
  out["seconds"] = seconds_since(t0);
  // A guess may be a lone byte of a UTF-8 character: written as U+FFFD.
  std::ofstream(fs::path(out_dir) / "audit.json") << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  return out;
}

}  // namespace pcmoe::eval
