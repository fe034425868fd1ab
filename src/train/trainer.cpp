#include "train/trainer.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "train/dp_step.h"
#include "train/local_model.h"
#include "tensor/gemm.h"
#include "train/checkpoint.h"
#include "train/hf_checkpoint.h"
#include "train/step.h"

namespace fs = std::filesystem;

namespace pcmoe {

Dataset load_split_corpus(const TrainRunConfig& cfg) {
  Dataset d;
  d.corpus = data::load_corpus(cfg.data);
  d.split = data::split_documents(d.corpus, cfg.data.val_fraction, cfg.data.split_seed);
  if (d.split.train.empty() || d.split.val.empty())
    throw std::runtime_error("corpus '" + d.corpus.name + "' has too few documents for a train/validation split (" +
                             std::to_string(d.corpus.docs.size()) + " documents)");
  return d;
}

Dataset prepare_dataset(const TrainRunConfig& cfg, const std::string& tokenizer_model) {
  Dataset d = load_split_corpus(cfg);
  const std::string file = tokenizer_model.empty() ? cfg.data.tokenizer : tokenizer_model;
  d.tokenizer = file.empty() ? data::Tokenizer::train_or_load(d.corpus, d.split.train, cfg.data)
                             : data::Tokenizer::load(file);
  if (d.tokenizer.vocab_size() != cfg.model.vocab_size)
    throw std::runtime_error("tokenizer has " + std::to_string(d.tokenizer.vocab_size()) +
                             " pieces but model.vocab_size is " + std::to_string(cfg.model.vocab_size));
  d.train = data::encode_documents(d.tokenizer, d.corpus, d.split.train, cfg.data.cache_dir);
  d.val = data::encode_documents(d.tokenizer, d.corpus, d.split.val, cfg.data.cache_dir);
  const size_t need = cfg.model.seq_len + 1;
  if (d.train.tokens.size() < need || d.val.tokens.size() < need)
    throw std::runtime_error("corpus too small: train has " + std::to_string(d.train.tokens.size()) +
                             " tokens, validation " + std::to_string(d.val.tokens.size()) +
                             "; each needs at least seq_len+1 = " + std::to_string(need));
  return d;
}

double evaluate(Model& model, const std::vector<int32_t>& windows, int n) {
  return evaluate_parts(model, windows, {n}).all;
}

PartsLoss evaluate_parts(Model& model, const std::vector<int32_t>& windows, const std::vector<int>& parts) {
  const int row = model.config().seq_len + 1, B = model.max_batch();
  PartsLoss out;
  double sum = 0;
  int start = 0;
  for (int n : parts) {
    double part = 0;
    for (int i = 0; i < n; i += B) {
      const int b = std::min(B, n - i);
      const double s = (double)model.forward(windows.data() + (size_t)(start + i) * row, b, 0.0f).ce * b;
      sum += s;
      part += s;
    }
    out.part.push_back(part / n);
    start += n;
  }
  out.all = sum / start;
  return out;
}

double unigram_entropy(const std::vector<int32_t>& tokens, int vocab_size) {
  std::vector<double> count(vocab_size, 0);
  for (int32_t t : tokens) count[t] += 1;
  double h = 0;
  for (double c : count)
    if (c > 0) {
      const double p = c / tokens.size();
      h -= p * std::log(p);
    }
  return h;
}

size_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;
}

namespace {

std::string format_duration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%dh%02dm", int(s / 3600), int(s / 60) % 60);
  else std::snprintf(buf, sizeof buf, "%dm%02ds", int(s / 60), int(s) % 60);
  return buf;
}

// Keeps the metrics lines of steps a resumed run has already done, drops the rest.
void truncate_metrics(const fs::path& path, int64_t keep_through_step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::stringstream kept;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("step") && j["step"].get<int64_t>() <= keep_through_step) kept << line << "\n";
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept.str();
}

}  // namespace

void write_tokenizer(const TrainRunConfig& cfg, const std::string& out_file) {
  if (fs::exists(out_file)) throw std::runtime_error(out_file + " exists: give another --out (a shared tokenizer is not overwritten)");
  const Dataset d = load_split_corpus(cfg);
  const data::Tokenizer tok = data::Tokenizer::train_or_load(d.corpus, d.split.train, cfg.data);
  if (fs::path(out_file).has_parent_path()) fs::create_directories(fs::path(out_file).parent_path());
  fs::copy_file(tok.model_file(), out_file);
}

namespace {

void print_dp_plan(const DpPlan& plan) {
  std::fprintf(stderr,
               "DP-SGD: %d units (%s), q %.4g (expected %.1f units a step), noise multiplier %.4f%s, clip %.4g "
               "(%s), delta %.3g; epsilon after %lld steps %.3f | %s\n",
               plan.n_units, plan.unit.c_str(), plan.q, plan.expected_batch(), plan.sigma,
               plan.sigma_calibrated ? " (calibrated)" : "", plan.clip, plan.per_layer ? "per-layer" : "flat",
               plan.delta, (long long)plan.budget_steps, plan.epsilon_after(plan.budget_steps),
               plan.randomness().c_str());
}

// The step the run starts at: a resumed run's checkpoint (its later metrics dropped), else 0 from
// the initial weights if any (and fresh metrics).
int64_t resume_or_init(const TrainOptions& opts, const ModelConfig& mc, const fs::path& ckpt,
                       const fs::path& metrics_path, ParamSet& params, AdamW& opt) {
  if (opts.resume) {
    const int64_t start = load_checkpoint(ckpt.string(), mc, params, &opt);
    std::fprintf(stderr, "resuming from %s at step %lld\n", ckpt.c_str(), (long long)start);
    truncate_metrics(metrics_path, start);
    return start;
  }
  if (!opts.init_from.empty()) InitSource(opts.init_from, mc).load(params);
  fs::remove(metrics_path);
  return 0;
}

// The step the run stops before: --until, the configured steps, or where DP's budget runs out.
int64_t last_step_of_run(const TrainOptions& opts, const TrainConfig& tc, const DpPlan* plan) {
  int64_t stop = opts.until >= 0 ? std::min<int64_t>(opts.until, tc.steps) : tc.steps;
  if (plan && plan->budget_steps < stop) {
    std::fprintf(stderr, "DP-SGD: the privacy budget epsilon %.4g allows %lld steps; stopping there\n",
                 plan->epsilon_budget, (long long)plan->budget_steps);
    stop = plan->budget_steps;
  }
  return stop;
}

// The validation loss after `steps`, into the metrics and onto the terminal.
double validate(Model& model, const std::vector<int32_t>& val, int n_val, int64_t steps, std::ofstream& metrics,
                bool tty) {
  const double loss = evaluate(model, val, n_val);
  metrics << nlohmann::json{{"step", steps}, {"val_loss", loss}, {"val_ppl", std::exp(loss)}}.dump() << "\n";
  metrics.flush();
  std::fprintf(stderr, "%sstep %lld: validation loss %.4f (perplexity %.1f)\n", tty ? "\n" : "", (long long)steps,
               loss, std::exp(loss));
  return loss;
}

}  // namespace

nlohmann::json run_training(const TrainRunConfig& cfg, const nlohmann::json& config, const TrainOptions& opts) {
  const ModelConfig& mc = cfg.model;
  const TrainConfig& tc = cfg.train;
  set_num_threads(tc.threads);
  const fs::path out(opts.out_dir), ckpt = out / "checkpoint", metrics_path = out / "metrics.jsonl";

  if (!opts.init_from.empty() && !cfg.data.tokenizer.empty())
    throw std::runtime_error("--init-from and config key 'data.tokenizer' both name a tokenizer (the initial weights "
                             "bring their own): drop data.tokenizer");
  Dataset ds = prepare_dataset(cfg, opts.init_from.empty() ? "" : init_tokenizer_file(opts.init_from));
  // DP-SGD: privacy units, the calibrated plan, and a model that can clip per unit.
  const bool dp = cfg.privacy.enabled;
  PrivacyUnits units;
  DpPlan plan;
  std::optional<PoissonSampler> batches;
  ModelConfig model_cfg = mc;
  if (dp) {
    units = make_privacy_units(ds.train.tokens, mc.seq_len, cfg.privacy.unit, ds.tokenizer.bos_id());
    plan = plan_dp(cfg.privacy, units.n_units(), tc.steps);
    batches = sampler_for(plan, tc.seed);
    if (!plan.aux_per_unit) model_cfg.aux_loss_weight = 0;
    print_dp_plan(plan);
  }
  fs::create_directories(opts.out_dir);  // after the plan: a refused privacy section writes nothing
  LocalModel lm(model_cfg, tc, dp ? std::max(tc.batch_size, units.max_windows()) : 0, dp);
  if (dp) lm.model.set_aux_per_sequence(plan.aux_per_unit);
  ParamSet& params = lm.params;
  Model& model = lm.model;
  AdamW& opt = lm.opt;
  const int64_t start = resume_or_init(opts, mc, ckpt, metrics_path, params, opt);

  data::BatchSampler sampler(ds.train, mc.seq_len, tc.seed);
  int n_val = 0;
  const std::vector<int32_t> val = data::validation_windows(ds.val, mc.seq_len, tc.eval_windows, &n_val);
  const double h_unigram = unigram_entropy(ds.train.tokens, mc.vocab_size);
  const size_t row = mc.seq_len + 1, per_step = (size_t)tc.grad_accum * tc.batch_size;
  std::vector<int32_t> windows(per_step * row);
  const int64_t tokens_per_step = (int64_t)per_step * mc.seq_len;

  std::fprintf(stderr,
               "pcmoe train: %zu parameters | train %zu tokens, val %zu tokens (%d windows) | "
               "unigram entropy %.3f nats | %d threads\n",
               params.numel(), ds.train.tokens.size(), ds.val.tokens.size(), n_val, h_unigram, tc.threads);
  std::ofstream metrics(metrics_path, std::ios::app);
  const bool tty = isatty(STDERR_FILENO);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  double train_seconds = 0, last_val = NAN;
  LossStats last{};
  const int64_t stop = last_step_of_run(opts, tc, dp ? &plan : nullptr);
  int64_t tokens_done = 0;
  for (int64_t step = start; step < stop; ++step) {
    const auto ts = clock::now();
    UpdateStats us{};
    nlohmann::json dp_metrics;
    if (dp) {
      us.lr = learning_rate(tc, step);
      NoiseSource noise = noise_for(plan, (uint64_t)step);
      const ClippedBatch cb = dp_local_step(model, params, opt, noise, units, plan, *batches, step, us.lr);
      last = cb.loss;
      us.grad_norm = cb.mean_norm;
      tokens_done += (int64_t)cb.windows * mc.seq_len;
      dp_metrics = {{"epsilon", plan.epsilon_after(step + 1)}, {"units", cb.units},
                    {"mean_unit_norm", cb.mean_norm}, {"clipped_fraction", cb.clipped_fraction}};
    } else {
      for (size_t m = 0; m < (size_t)tc.grad_accum; ++m)
        sampler.sample(step, (int)m, tc.batch_size, windows.data() + m * tc.batch_size * row);
      last = accumulate_gradients(model, params, windows.data(), tc.batch_size, tc.grad_accum);
      us = apply_update(params, opt, tc, step);
      tokens_done += tokens_per_step;
    }
    train_seconds += std::chrono::duration<double>(clock::now() - ts).count();
    const int64_t done = step + 1 - start;
    const double tok_s = tokens_done / train_seconds;
    const double eta = (tc.steps - step - 1) * train_seconds / done;
    if (tty || (step + 1) % tc.log_every == 0 || step + 1 == tc.steps)
      std::fprintf(stderr, "%sstep %lld/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s", tty ? "\r" : "",
                   (long long)step + 1, tc.steps, last.ce, us.lr, tok_s, format_duration(eta).c_str(),
                   tty ? "   " : "\n");
    if ((step + 1) % tc.log_every == 0 || step + 1 == tc.steps || step + 1 == stop) {
      nlohmann::json line = {{"step", step + 1}, {"loss", last.total}, {"ce", last.ce},
                             {"aux", last.aux}, {"z", last.z}, {"lr", us.lr},
                             {"grad_norm", us.grad_norm}, {"tokens", dp ? tokens_done : (step + 1) * tokens_per_step},
                             {"tok_per_s", tok_s}};
      if (dp) line.update(dp_metrics);
      metrics << line.dump() << "\n";
      metrics.flush();
    }
    if ((tc.eval_every > 0 && (step + 1) % tc.eval_every == 0) || step + 1 == tc.steps)
      last_val = validate(model, val, n_val, step + 1, metrics, tty);
    if ((tc.checkpoint_every > 0 && (step + 1) % tc.checkpoint_every == 0) || step + 1 == stop)
      save_checkpoint(ckpt.string(), config, params, &opt, step + 1, ds.tokenizer.model_file());
  }
  if (std::isnan(last_val)) last_val = evaluate(model, val, n_val);

  nlohmann::json report = {
      {"steps", tc.steps},
      {"resumed_from_step", start},
      {"stopped_at_step", stop},
      {"tokens_trained", tokens_done},
      {"final_train_loss", last.ce},
      {"final_val_loss", last_val},
      {"final_val_ppl", std::exp(last_val)},
      {"unigram_entropy", h_unigram},
      {"tokens_per_s", train_seconds > 0 ? tokens_done / train_seconds : 0.0},
      {"train_seconds", train_seconds},
      {"wall_seconds", std::chrono::duration<double>(clock::now() - t0).count()},
      {"peak_rss_bytes", peak_rss_bytes()},
      {"parameters", params.numel()},
      {"arena_bytes", lm.memory()},
      {"config", config}};
  if (dp) report["privacy"] = plan.report(stop);
  std::ofstream(out / "report.json") << report.dump(2) << "\n";
  return report;
}

}  // namespace pcmoe
