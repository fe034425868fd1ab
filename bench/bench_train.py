"""Training throughput and peak memory: pcmoe in fp32 and in bf16 compute against the PyTorch
reference in fp32, same model, same steps, same batch shape, same thread count, side by side in
one run, on configs/small.json and configs/bench_moe.json (a Mixtral-shaped model: d_model 256,
4 layers, 8 experts top-2, d_ff 512, seq_len 256, batch 8, untied head).

    /usr/bin/python3 bench/bench_train.py [--configs A.json B.json] [--steps 30] [--threads 2] [--repeats 3]

Prints the CPU, the kernels and libraries each side uses, the machine's product rates at 1024^3
(measured here, by build/pcmoe_gemm_rate), the model FLOPs per token (counted below) and, per
run, tokens/s, achieved GFLOP/s and its fraction of the machine's fp32 rate. pcmoe trains on
the Brown corpus (its tokens/s counts optimizer steps only, not data loading); the PyTorch peer
trains on random token windows of the same shape, with OpenBLAS at its best core type for the
CPU whatever the environment presets (bench/benchlib.py: torch_env). The last line is
`ratio pcmoe/torch tokens/s: X` for the last config, pcmoe at its faster dtype."""
import argparse
import json
import os
import subprocess
import tempfile

from benchlib import cpu_line, torch_env, torch_gemm_rate

ROOT = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--gemm-rate", default=os.path.join(ROOT, "build", "pcmoe_gemm_rate"))
ap.add_argument("--configs", nargs="+",
                default=[os.path.join(ROOT, "configs", "small.json"), os.path.join(ROOT, "configs", "bench_moe.json")])
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=1,
                help="runs of each side, interleaved; the table gives the best and the range (for cores shared with others)")
a = ap.parse_args()

env = dict(os.environ)
env["OMP_NUM_THREADS"] = str(a.threads)
peer_env, peer_note = torch_env(env)


def model_flops_per_token(m):
    """Multiply-adds x 2 of one training token (forward + backward = 3 x forward): every
    projection, the experts a token reaches, the router, the head, and causal attention (each
    query meets (T+1)/2 keys on average, in QKᵀ and PV)."""
    C, H, KV, T = m["d_model"], m["n_heads"], m["n_kv_heads"], m["seq_len"]
    HD, KVD = C, C // H * KV
    fwd = 0
    for l in range(m["n_layers"]):
        fwd += 2 * C * (2 * HD + 2 * KVD) + 2 * 2 * HD * (T + 1) / 2
        if (l + 1) % m["moe_every"] == 0:
            fwd += 2 * C * m["n_experts"] + m["top_k"] * 2 * 3 * C * m["d_ff"]
        else:
            fwd += 2 * 3 * C * m["d_ff_dense"]
    fwd += 2 * C * m["vocab_size"]
    return 3 * fwd


def run_pcmoe(cfg, dtype, tmp, r):
    c = json.loads(json.dumps(cfg))
    c["model"]["compute_dtype"] = dtype
    path = os.path.join(tmp, f"cfg_{dtype}.json")
    json.dump(c, open(path, "w"))
    # The first run warms the tokenizer cache, so the measured one times training only.
    subprocess.run([a.pcmoe, "train", "--config", path, "--out", os.path.join(tmp, f"warm_{dtype}"), "--until", "1"],
                   env=env, check=True, capture_output=True)
    out = os.path.join(tmp, f"run_{dtype}_{r}")
    subprocess.run([a.pcmoe, "train", "--config", path, "--out", out], env=env, check=True, capture_output=True)
    return json.load(open(os.path.join(out, "report.json")))


def run_torch(tmp):
    tp = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "torch_peer.py"), "--config",
                         os.path.join(tmp, "cfg_fp32.json"), "--steps", str(a.steps), "--threads", str(a.threads)],
                        env=peer_env, check=True, capture_output=True, text=True)
    return json.loads(tp.stdout.strip().splitlines()[-1])


def bench(config_path, rate):
    cfg = json.load(open(config_path))
    cfg["train"].update({"steps": a.steps, "warmup": min(10, a.steps - 1), "eval_every": 0,
                         "checkpoint_every": 0, "threads": a.threads, "log_every": a.steps})
    cfg["data"]["path"] = os.path.join(ROOT, cfg["data"]["path"])
    cfg["data"]["cache_dir"] = os.path.join(ROOT, cfg["data"]["cache_dir"])
    tmp = tempfile.mkdtemp(prefix="pcmoe-bench-")
    sides = {"pcmoe fp32": [], "pcmoe bf16": [], "torch fp32": []}
    for r in range(a.repeats):
        sides["pcmoe fp32"].append(run_pcmoe(cfg, "fp32", tmp, r))
        sides["pcmoe bf16"].append(run_pcmoe(cfg, "bf16", tmp, r))
        sides["torch fp32"].append(run_torch(tmp))
    runs = {name: max(reps, key=lambda x: x["tokens_per_s"]) for name, reps in sides.items()}
    m = cfg["model"]
    flops = model_flops_per_token(m)
    print(f"\n== {os.path.relpath(config_path, ROOT)}: d_model {m['d_model']}, {m['n_layers']} layers, "
          f"{m['n_experts']} experts top-{m['top_k']}, d_ff {m['d_ff']}, "
          f"{'tied' if m['tie_embeddings'] else 'untied'} head, {runs['pcmoe fp32']['parameters']} parameters; "
          f"batch {cfg['train']['batch_size']}x{m['seq_len']}; {a.steps} steps; {flops / 1e6:.1f} MFLOP per token"
          + (f"; best of {a.repeats} interleaved runs" if a.repeats > 1 else ""))
    print(f"{'':14} {'tokens/s':>10} {'GFLOP/s':>8} {'of fp32 rate':>13} {'peak RSS MiB':>13}"
          + (f" {'range tokens/s':>16}" if a.repeats > 1 else ""))
    for name, run in runs.items():
        tps, g = run["tokens_per_s"], run["tokens_per_s"] * flops / 1e9
        spread = [x["tokens_per_s"] for x in sides[name]]
        print(f"{name:14} {tps:10.0f} {g:8.1f} {g / rate['fp32_gflops']:13.0%} {run['peak_rss_bytes'] / 2**20:13.1f}"
              + (f" {min(spread):9.0f}-{max(spread):.0f}" if a.repeats > 1 else ""))
    th = runs["torch fp32"]["tokens_per_s"]
    print(f"ratio pcmoe fp32/torch tokens/s: {runs['pcmoe fp32']['tokens_per_s'] / th:.2f}")
    print(f"ratio pcmoe bf16/torch tokens/s: {runs['pcmoe bf16']['tokens_per_s'] / th:.2f}")
    best = max(("fp32", "bf16"), key=lambda d: runs[f"pcmoe {d}"]["tokens_per_s"])
    return best, runs[f"pcmoe {best}"]["tokens_per_s"] / th


rate = json.loads(subprocess.run([a.gemm_rate, str(a.threads)], env=env, check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1])
torch_version = subprocess.run(["/usr/bin/python3", "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True).stdout.strip()
print(f"CPU: {cpu_line()}; {a.threads} threads; OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'passive (pcmoe default)')}")
print(f"pcmoe kernels: {rate['kernels']}")
print(f"torch {torch_version} (fp32; {peer_note}); its 1024^3 fp32 product: "
      f"{torch_gemm_rate(peer_env, a.threads):.0f} GFLOP/s")
print(f"machine product rate, 1024^3, {a.threads} threads: fp32 {rate['fp32_gflops']:.0f} GFLOP/s, "
      f"bf16 {rate['bf16_gflops']:.0f} GFLOP/s (without bf16 units, its fallback: {rate['bf16_fallback_gflops']:.0f})")
for path in a.configs:
    best, ratio = bench(path, rate)
print(f"(pcmoe at its faster dtype, {best}, on {os.path.basename(a.configs[-1])})")
print(f"ratio pcmoe/torch tokens/s: {ratio:.2f}")
