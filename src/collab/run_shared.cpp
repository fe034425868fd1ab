#include "collab/run_shared.h"

#include <unistd.h>

#include <cstdio>

#include "common/sha256.h"
#include "common/stopwatch.h"

namespace pcmoe {

bool private_run(const Shared& sh) { return !sh.plans.empty(); }
uint64_t noise_stream(int p, int64_t round) { return ((uint64_t)(p + 1) << 32) + (uint64_t)round; }

// One model on every party's validation windows, timed. The learning curves use the same
// windows as the final table, so a curve's last point is the table's pooled loss.
PartsLoss evaluate_pooled(Model& model, Shared& sh) {
  const auto t0 = clock_type::now();
  const double cpu0 = process_cpu_seconds();
  PartsLoss r = evaluate_parts(model, sh.pooled_val, sh.val_parts);
  sh.eval_seconds += seconds_since(t0);
  sh.eval_cpu_seconds += process_cpu_seconds() - cpu0;
  sh.eval_windows += sh.n_pooled_val;
  return r;
}
// A model's validation loss for party `own`: on the pooled validation data and on its own.
nlohmann::json party_losses(const PartsLoss& r, int own) {
  return {{"val_loss_pooled", r.all}, {"val_loss_own", r.part[own]}};
}
nlohmann::json evaluate_everywhere(Model& model, Shared& sh, int own) { return party_losses(evaluate_pooled(model, sh), own); }

double curve_loss(Model& model, Shared& sh) { return evaluate_pooled(model, sh).all; }
// The curve's loss at the start of a mode, whose model holds `params`.
double start_loss(Model& model, const ParamSet& params, Shared& sh) {
  const std::string key = std::to_string(model.max_batch()) + " " +
                          sha256_hex(std::string((const char*)params.values(), params.numel() * sizeof(float)));
  const auto it = sh.start_losses.find(key);
  return it != sh.start_losses.end() ? it->second : sh.start_losses[key] = curve_loss(model, sh);
}
bool curve_due(const Shared& sh, int64_t done) {
  const int every = sh.cfg.train.eval_every;
  return done == 0 || done == sh.rounds || (every > 0 && done % every == 0);
}
// collab's own modes take the curve's last point from the final evaluation, not a pass of its own.
bool curve_due_before_end(const Shared& sh, int64_t done) { return done < sh.rounds && curve_due(sh, done); }
nlohmann::json curve_point(int64_t done, const Shared& sh, double bytes_sent, double bytes_received, double loss) {
  return {{"turns", done}, {"tokens_per_party", (double)done * sh.tokens_per_turn},
          {"bytes_sent_per_party", bytes_sent}, {"bytes_received_per_party", bytes_received}, {"val_loss_pooled", loss}};
}

void progress(const char* mode, int64_t done, int64_t total, float loss, double s) {
  const bool tty = isatty(STDERR_FILENO);
  if (!tty && done % 50 != 0 && done != total) return;
  std::fprintf(stderr, "%s[%s] turn %lld/%lld | loss %.4f | %.0fs, ETA %.0fs%s", tty ? "\r" : "", mode,
               (long long)done, (long long)total, loss, s, s / done * (total - done), tty ? "   " : "\n");
  if (tty && done == total) std::fprintf(stderr, "\n");
}

void fill_turn(const Shared& sh, int party, int64_t step, int32_t* windows) {
  pcmoe::fill_turn(sh.cfg, sh.parties[party], step, windows);
}

}  // namespace pcmoe
