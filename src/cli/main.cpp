// pcmoe: the command line. Thin: parses arguments, calls the library, prints results.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "collab/run_config.h"
#include "collab/runner.h"
#include "common/sha256.h"
#include "eval/fed_server_audit.h"
#include "eval/loaded_model.h"
#include "fed/fed_runner.h"
#include "net/certs.h"
#include "net/deploy.h"
#include "net/fed_deploy.h"
#include "net/party.h"
#include "model/model.h"
#include "tensor/cpu.h"
#include "tensor/gemm.h"
#include "tensor/rng.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using namespace pcmoe;

namespace {

constexpr const char* kUsage = R"(pcmoe — collaborative Mixture-of-Experts training

usage:
  pcmoe train    --config FILE --out DIR [--resume] [--until STEP] [--init-from CKPT|HF_DIR]
  pcmoe eval     --checkpoint DIR [--windows N]
  pcmoe generate --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-p P] [--seed S]
  pcmoe collab   --config FILE --out DIR
  pcmoe import   --hf DIR --out CKPT [--seq-len T] [--tokenizer FILE] [--parties N --party P] [--json]
  pcmoe export   --checkpoint CKPT --hf DIR [--dtype fp32|bf16] [--max-shard-bytes B] [--max-position P]
  pcmoe tokenizer --config FILE --out FILE
  pcmoe certs    --config FILE --out DIR
  pcmoe party    --config FILE --party I --out DIR (--certs DIR | --insecure) [--resume] [--until R]
  pcmoe launch   --config FILE --out DIR [--insecure] [--resume] [--until R]
  pcmoe server   --config FILE --out DIR (--certs DIR | --insecure)
  pcmoe memory   --config FILE --parties N [--party P]
  pcmoe dp-budget (--sigma S | --epsilon E) --q Q --steps T (--delta D | --units N) [--allow-weak-delta] [--json]
  pcmoe audit    --run DIR --out DIR2 [--fed-run DIR3]... [--public-windows N] [--mlp-every-round]

  train     trains the model of FILE; writes DIR/metrics.jsonl, DIR/report.json, DIR/checkpoint/
            --resume continues from DIR/checkpoint with the exact loss curve of an unbroken run
            --until stops after STEP (with a checkpoint), to train in several sittings
            --init-from starts from a checkpoint's or a Hugging Face directory's weights and tokenizer
  eval      validation loss and perplexity of a checkpoint on its config's validation split
  generate  samples text from a checkpoint (temperature 0 = greedy)
  collab    PC-MoE with all parties simulated in one process, beside centralised,
            local-only and federated (FedAvg, int8, top-k, CG-FedLLM) training on the same data
            and tokens per party; prints a table, writes DIR/report.json and DIR/metrics.jsonl
  import    a Hugging Face Mixtral or OLMoE directory (config.json, model.safetensors or shards with
            model.safetensors.index.json, tokenizer.model) as a pcmoe checkpoint, read tensor by tensor;
            --parties/--party: only that party's backbone and own experts (e mod N = P)
  export    a checkpoint as a Hugging Face directory (Mixtral, or OLMoE with model.qk_norm), in fp32 or
            bf16, in shards of at most B bytes with an index when it is larger
  tokenizer trains the tokenizer of FILE's data section (its corpus's training split, e.g. public
            text) and writes it to FILE, for every party's data.tokenizer
  certs     a development CA and a key and certificate per party of FILE's deploy section
            (CN = party name): DIR/ca.pem, DIR/ca.key, DIR/<name>.pem, DIR/<name>.key
  party     runs party I of a deployment as its own process: serves its expert shard over
            gRPC with mutual TLS (party 0 also coordinates), trains on its turns, writes
            DIR/metrics.jsonl, DIR/report.json, DIR/checkpoint/; --insecure: plaintext,
            loopback only; --until R stops after R rounds; --resume continues from DIR/checkpoint
            deploy.mode picks what the deployment trains: pc-moe, or a federated mode
            (fedavg, fedavg-lora, int8, topk-ef, cg-fedllm; the server runs in party 0's process)
  launch    makes certificates and runs every party of FILE as a local process on loopback,
            logs in DIR/party<i>.log; merges DIR/metrics.jsonl, writes DIR/report.json
  server    the federated server of a deployment with deploy.fed_server "separate", as its own
            process (joins like a party, drives the rounds); writes DIR/report.json
  memory    one party's planned memory and peak RSS, measured in its own process
  dp-budget DP-SGD privacy budget (RDP accountant, Poisson sampling rate Q, T steps): the epsilon
            that noise multiplier S spends, or the noise multiplier that target epsilon E needs; with
            --units N, delta defaults to 1/(10N) and a delta >= 1/N is refused, as in a run
  audit     what a curious expert host reconstructs of the other parties' tokens from its
            recording of a collab run (config section "audit"); writes DIR2/audit.json
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --key value pairs and bare --flags, checked against what the command accepts.
std::map<std::string, std::string> parse_args(int argc, char** argv, const std::vector<std::string>& valued,
                                              const std::vector<std::string>& flags) {
  std::map<std::string, std::string> out;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (std::find(flags.begin(), flags.end(), a) != flags.end()) {
      out[a] = "1";
    } else if (std::find(valued.begin(), valued.end(), a) != valued.end()) {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      out[a] = argv[++i];
    } else {
      throw UsageError("unknown argument '" + a + "'");
    }
  }
  return out;
}

std::string need(const std::map<std::string, std::string>& a, const std::string& key) {
  auto it = a.find(key);
  if (it == a.end()) throw UsageError("missing " + key);
  return it->second;
}

double number(const std::map<std::string, std::string>& a, const std::string& key, double fallback) {
  auto it = a.find(key);
  if (it == a.end()) return fallback;
  try {
    size_t used = 0;
    double v = std::stod(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("");
    return v;
  } catch (const std::exception&) {
    throw UsageError(key + " expects a number, got '" + it->second + "'");
  }
}

int cmd_train(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--out", "--until", "--init-from"}, {"--resume"});
  RunConfig cfg = load_run_config(need(a, "--config"));
  TrainOptions opts{need(a, "--out"), a.count("--resume") > 0, (int64_t)number(a, "--until", -1),
                    a.count("--init-from") ? a.at("--init-from") : ""};
  nlohmann::json r = run_training(cfg, to_json(cfg), opts);
  std::printf("final train loss %.4f | validation loss %.4f (perplexity %.1f) | unigram entropy %.4f\n",
              r["final_train_loss"].get<double>(), r["final_val_loss"].get<double>(),
              r["final_val_ppl"].get<double>(), r["unigram_entropy"].get<double>());
  std::printf("%.0f tokens/s | peak RSS %.1f MiB | report: %s\n", r["tokens_per_s"].get<double>(),
              r["peak_rss_bytes"].get<double>() / 1048576.0, (fs::path(opts.out_dir) / "report.json").c_str());
  return 0;
}

int cmd_eval(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--checkpoint", "--windows"}, {});
  const std::string dir = resolve_checkpoint(need(a, "--checkpoint"));
  LoadedModel m(dir, read_checkpoint_config(dir).train.batch_size);
  Dataset ds = prepare_dataset(m.cfg, (fs::path(dir) / "tokenizer.model").string());
  int n = 0;
  auto windows = data::validation_windows(ds.val, m.cfg.model.seq_len, (int)number(a, "--windows", m.cfg.train.eval_windows), &n);
  const double loss = evaluate(m.model, windows, n);
  std::printf("validation loss %.4f | perplexity %.2f | %d windows of %d tokens\n", loss, std::exp(loss), n,
              m.cfg.model.seq_len);
  return 0;
}

int cmd_generate(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--checkpoint", "--prompt", "--tokens", "--temperature", "--top-p", "--seed"}, {});
  const std::string dir = resolve_checkpoint(need(a, "--checkpoint"));
  const int n_new = (int)number(a, "--tokens", 100);
  const double temperature = number(a, "--temperature", 0.8), top_p = number(a, "--top-p", 0.95);
  if (n_new < 0 || temperature < 0 || top_p <= 0 || top_p > 1)
    throw UsageError("need --tokens >= 0, --temperature >= 0, 0 < --top-p <= 1");
  Rng rng((uint64_t)number(a, "--seed", 1));
  LoadedModel m(dir, 1);
  data::Tokenizer tok = data::Tokenizer::load((fs::path(dir) / "tokenizer.model").string());
  const int T = m.cfg.model.seq_len, V = m.cfg.model.vocab_size;
  std::vector<int32_t> ids{tok.bos_id()};
  for (int32_t id : tok.encode(a.count("--prompt") ? a.at("--prompt") : "")) ids.push_back(id);
  const size_t prompt_len = ids.size();
  std::vector<int32_t> window(T);
  std::vector<std::pair<float, int>> probs(V);
  for (int i = 0; i < n_new; ++i) {
    const size_t start = ids.size() > (size_t)T ? ids.size() - T : 0, len = ids.size() - start;
    std::fill(window.begin(), window.end(), 0);
    std::copy(ids.begin() + start, ids.end(), window.begin());
    const float* logits = m.model.logits(window.data(), 1) + (len - 1) * V;
    int next = 0;
    if (temperature == 0) {
      next = int(std::max_element(logits, logits + V) - logits);
    } else {
      const float mx = *std::max_element(logits, logits + V);
      double sum = 0;
      for (int v = 0; v < V; ++v) sum += (probs[v] = {std::exp((logits[v] - mx) / temperature), v}).first;
      // NaN or inf logits would leave no token to keep below.
      if (!std::isfinite(sum)) throw std::runtime_error("the model's outputs are not finite (its weights are too large)");
      std::sort(probs.begin(), probs.end(), [](auto& x, auto& y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
      double mass = 0;
      size_t keep = 0;
      while (keep < probs.size() && mass < top_p * sum) mass += probs[keep++].first;
      double r = rng.uniform_open() * mass;
      next = probs[keep - 1].second;
      for (size_t j = 0; j < keep; ++j)
        if ((r -= probs[j].first) <= 0) {
          next = probs[j].second;
          break;
        }
    }
    if (next == tok.eos_id()) break;
    ids.push_back(next);
  }
  std::printf("%s\n", tok.decode(std::vector<int32_t>(ids.begin() + 1, ids.end())).c_str());
  std::fprintf(stderr, "(%zu prompt tokens, %zu generated)\n", prompt_len - 1, ids.size() - prompt_len);
  return 0;
}

std::string mib(const nlohmann::json& bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", bytes.get<double>() / 1048576.0);
  return buf;
}

int cmd_collab(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--out"}, {});
  RunConfig cfg = net::load_deploy_run(need(a, "--config")).run;  // a deploy section is allowed (and checked)
  const std::string out = need(a, "--out");
  nlohmann::json r = run_collab(cfg, out, fed::fed_modes(eval::fed_server_audit));
  auto cell = [](const nlohmann::json& row, const char* mode) -> std::string {
    if (!row.contains(mode)) return "-";
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.3f / %.3f", row[mode]["val_loss_own"].get<double>(),
                  row[mode]["val_loss_pooled"].get<double>());
    return buf;
  };
  std::printf("\nvalidation loss (nats), own data / pooled data, after %s%lld tokens per party\n",
              r.contains("privacy") ? "DP-SGD (see report.json's privacy block) on about " : "",
              r["tokens_per_party"].get<long long>());
  const auto& ran = r["modes"];
  const bool classic = ran.contains("pc-moe") || ran.contains("centralised") || ran.contains("local-only-full");
  if (classic)
    std::printf("%-5s %-17s %-17s %-17s %-17s %10s %12s\n", "party", "pc-moe", "centralised", "local full", "local budget",
                "pcmoe MiB", "bytes/token");
  for (const auto& row : classic ? r["per_party"] : nlohmann::json::array()) {
    const int p = row["party"];
    std::string mem = "-", traffic = "-";
    if (row.contains("pc-moe")) {
      mem = mib(row["pc-moe"]["memory"]["total"]);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.0f", row["pc-moe"]["bytes_sent_per_token"].get<double>() +
                                                 row["pc-moe"]["bytes_received_per_token"].get<double>());
      traffic = buf;
    }
    std::printf("%-5d %-17s %-17s %-17s %-17s %10s %12s\n", p, cell(row, "pc-moe").c_str(), cell(row, "centralised").c_str(),
                cell(row, "local-only-full").c_str(), cell(row, "local-only-budget").c_str(), mem.c_str(), traffic.c_str());
  }
  bool fed_header = false;
  for (const auto& [mode, run] : r["modes"].items()) {
    if (!run.is_object() || !run.contains("rounds")) continue;
    if (!fed_header) {
      std::printf("\nfederated baselines: the global model after %d rounds of %d local steps; bytes per trained token,\n"
                  "up = party to server; reconstruction of each round's update (mean over rounds)\n",
                  run["rounds"].get<int>(), run["local_steps"].get<int>());
      std::printf("%-11s %-5s %-17s %10s %10s %10s %7s %7s %8s\n", "mode", "party", "val own / pooled", "up B/tok",
                  "down B/tok", "party MiB", "cosine", "SNR dB", "seconds");
      fed_header = true;
    }
    for (size_t p = 0; p < run["parties"].size(); ++p) {
      const auto& pp = run["parties"][p];
      char loss[48], cos[16] = "-", snr[16] = "-";
      std::snprintf(loss, sizeof loss, "%.3f / %.3f", pp["val_loss_own"].get<double>(), pp["val_loss_pooled"].get<double>());
      if (pp.contains("reconstruction_cosine")) {
        std::snprintf(cos, sizeof cos, "%.3f", pp["reconstruction_cosine"].get<double>());
        std::snprintf(snr, sizeof snr, "%.2f", pp["reconstruction_snr_db"].get<double>());
      }
      std::printf("%-11s %-5zu %-17s %10.1f %10.1f %10s %7s %7s %8.0f\n", mode.c_str(), p, loss,
                  pp["bytes_sent_per_token"].get<double>(), pp["bytes_received_per_token"].get<double>(),
                  mib(pp["memory"]["total"]).c_str(), cos, snr, run["wall_seconds"].get<double>());
    }
  }
  if (r["modes"].contains("centralised"))
    std::printf("centralised model: %s MiB planned\n", mib(r["modes"]["centralised"]["memory"]["total"]).c_str());
  if (r.contains("peak_memory_ratio"))
    std::printf("peak_memory_ratio (largest party / centralised): %.3f\n", r["peak_memory_ratio"].get<double>());
  std::printf("peak RSS of this one-process run: %s MiB | %.0f s | report: %s\n", mib(r["peak_rss_bytes"]).c_str(),
              r["wall_seconds"].get<double>(), (fs::path(out) / "report.json").c_str());
  return 0;
}

// --until R of party and launch: rounds to stop after (-1: all of train.steps).
int64_t until_rounds(const std::map<std::string, std::string>& a) {
  const double r = number(a, "--until", -1);
  if (a.count("--until") && (r < 1 || r != std::floor(r))) throw UsageError("--until expects a number of rounds >= 1");
  return (int64_t)r;
}

int cmd_tokenizer(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--out"}, {});
  const RunConfig cfg = net::load_deploy_run(need(a, "--config")).run;
  const std::string out = need(a, "--out");
  write_tokenizer(cfg, out);
  std::printf("wrote %s (%d pieces, sha256 %s)\n", out.c_str(), cfg.model.vocab_size, sha256_file(out).c_str());
  return 0;
}

int cmd_certs(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--out"}, {});
  const net::DeployRun dr = net::load_deploy_run(need(a, "--config"));
  const std::string out = need(a, "--out");
  net::make_certs(dr.deploy, out);
  std::printf("wrote %s/ca.pem (the CA all parties trust), %s/ca.key (keep it private) and per party:\n", out.c_str(),
              out.c_str());
  for (const net::PartyAddress& p : dr.deploy.parties)
    std::printf("  %s/%s.pem, %s/%s.key  (%s, listens on %s)\n", out.c_str(), p.name.c_str(), out.c_str(), p.name.c_str(),
                p.name.c_str(), p.address.c_str());
  return 0;
}

int cmd_party(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--party", "--certs", "--out", "--until"}, {"--insecure", "--resume"});
  net::PartyOptions o;
  o.config = need(a, "--config");
  const double p = number(a, "--party", -1);
  if (p < 0 || p != std::floor(p)) throw UsageError("--party expects a party index >= 0");
  o.party = (int)p;
  o.insecure = a.count("--insecure") > 0;
  if (o.insecure == (a.count("--certs") > 0)) throw UsageError("give either --certs DIR (mutual TLS) or --insecure");
  if (!o.insecure) o.certs_dir = a.at("--certs");
  o.out_dir = need(a, "--out");
  o.resume = a.count("--resume") > 0;
  o.until = until_rounds(a);
  const nlohmann::json r = net::run_party(o);
  const bool federated = r.contains("rounds");  // a federated party reports rounds of local steps
  std::printf("%s: %lld %s, validation loss %.4f on own data, %.0f bytes sent + %.0f received per token, report: %s\n",
              r["name"].get<std::string>().c_str(), r[federated ? "rounds" : "turns"].get<long long>(),
              federated ? "rounds" : "turns", r["val_loss_own"].get<double>(),
              r["bytes_sent_per_token"].get<double>(), r["bytes_received_per_token"].get<double>(),
              (fs::path(o.out_dir) / "report.json").c_str());
  return 0;
}

int cmd_server(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--certs", "--out"}, {"--insecure"});
  net::PartyOptions o;
  o.config = need(a, "--config");
  o.insecure = a.count("--insecure") > 0;
  if (o.insecure == (a.count("--certs") > 0)) throw UsageError("give either --certs DIR (mutual TLS) or --insecure");
  if (!o.insecure) o.certs_dir = a.at("--certs");
  o.out_dir = need(a, "--out");
  const nlohmann::json r = net::run_fed_server(o);
  std::printf("%s: %s, %d rounds, %.0f bytes sent + %.0f received per token of all parties, report: %s\n",
              r["name"].get<std::string>().c_str(), r["mode"].get<std::string>().c_str(), r["rounds"].get<int>(),
              r["bytes_sent_per_token"].get<double>(), r["bytes_received_per_token"].get<double>(),
              (fs::path(o.out_dir) / "report.json").c_str());
  return 0;
}

int cmd_launch(int argc, char** argv) {
  auto a = parse_args(argc, argv, {"--config", "--out", "--until"}, {"--insecure", "--resume"});
  const std::string out = need(a, "--out");
  const nlohmann::json r = net::run_launch(fs::canonical("/proc/self/exe").string(), need(a, "--config"), out,
                                           a.count("--insecure") > 0, a.count("--resume") > 0, until_rounds(a));
  const auto bytes_per_token = [](const nlohmann::json& rep) {
    return rep["bytes_sent_per_token"].get<double>() + rep["bytes_received_per_token"].get<double>();
  };
  for (const auto& p : r["parties"]) {
    std::printf("party %d: exit %d", p["party"].get<int>(), p["exit_code"].get<int>());
    if (p.contains("report"))
      std::printf(" | validation loss %.4f on own data | %.0f bytes/token", p["report"]["val_loss_own"].get<double>(),
                  bytes_per_token(p["report"]));
    std::printf("\n");
  }
  if (r.contains("server")) {
    std::printf("server: exit %d", r["server"]["exit_code"].get<int>());
    if (r["server"].contains("report"))
      std::printf(" | %.0f bytes per token of all parties", bytes_per_token(r["server"]["report"]));
    std::printf("\n");
  }
  if (r.contains("turns"))
    std::printf("%zu turns", r["turns"].get<size_t>());
  else
    std::printf("%s: %zu party rounds", r["mode"].get<std::string>().c_str(), r["party_rounds"].get<size_t>());
  std::printf(" in %.1f s (%.0f tokens/s over all parties) | report: %s\n", r["wall_seconds"].get<double>(),
              r["tokens_per_s"].get<double>(), (fs::path(out) / "report.json").c_str());
  if (!r["ok"].get<bool>()) throw std::runtime_error("a party failed; see its log in " + out);
  return 0;
}

}  // namespace

int cmd_memory(int argc, char** argv);
int cmd_dp_budget(int argc, char** argv);
int cmd_audit(int argc, char** argv);
int cmd_import(int argc, char** argv);
int cmd_export(int argc, char** argv);

int main(int argc, char** argv) {
  set_up_cpu_runtime(argv);
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "generate") return cmd_generate(argc, argv);
    if (cmd == "collab") return cmd_collab(argc, argv);
    if (cmd == "tokenizer") return cmd_tokenizer(argc, argv);
    if (cmd == "certs") return cmd_certs(argc, argv);
    if (cmd == "party") return cmd_party(argc, argv);
    if (cmd == "launch") return cmd_launch(argc, argv);
    if (cmd == "server") return cmd_server(argc, argv);
    if (cmd == "memory") return cmd_memory(argc, argv);
    if (cmd == "dp-budget") return cmd_dp_budget(argc, argv);
    if (cmd == "audit") return cmd_audit(argc, argv);
    if (cmd == "import") return cmd_import(argc, argv);
    if (cmd == "export") return cmd_export(argc, argv);
    throw UsageError("unknown command '" + cmd + "'");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "pcmoe %s: %s\n\n%s", cmd.c_str(), e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcmoe %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
