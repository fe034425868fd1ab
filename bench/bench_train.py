"""Training throughput and peak memory: pcmoe in fp32 and in bf16 compute against the PyTorch
reference in fp32, same model, same steps, same batch shape, same thread count, side by side in
one run, on configs/small.json and configs/bench_moe.json (a Mixtral-shaped model: d_model 256,
4 layers, 8 experts top-2, d_ff 512, seq_len 256, batch 8, untied head).

    /usr/bin/python3 bench/bench_train.py [--configs A.json B.json] [--steps 30] [--threads 2]

Prints the CPU, the kernels and libraries each side uses, the machine's product rates at 1024^3
(measured here, by build/pcmoe_gemm_rate), the model FLOPs per token (counted below) and, per
run, tokens/s, achieved GFLOP/s and its fraction of the machine's fp32 rate. pcmoe trains on
the Brown corpus (its tokens/s counts optimizer steps only, not data loading); the PyTorch peer
trains on random token windows of the same shape. The last line is
`ratio pcmoe/torch tokens/s: X` for the last config, pcmoe at its faster dtype."""
import argparse
import json
import os
import subprocess
import tempfile

from benchlib import cpu_line

ROOT = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--gemm-rate", default=os.path.join(ROOT, "build", "pcmoe_gemm_rate"))
ap.add_argument("--configs", nargs="+",
                default=[os.path.join(ROOT, "configs", "small.json"), os.path.join(ROOT, "configs", "bench_moe.json")])
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

env = dict(os.environ)
if "OPENBLAS_CORETYPE" not in env:
    # pcmoe picks SkylakeX / Haswell from the CPU flags; the same for the PyTorch peer
    flags = open("/proc/cpuinfo").read()
    env["OPENBLAS_CORETYPE"] = "SkylakeX" if " avx512bw" in flags else "Haswell"
env["OMP_NUM_THREADS"] = str(a.threads)


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


def run_pcmoe(cfg, dtype, tmp):
    c = json.loads(json.dumps(cfg))
    c["model"]["compute_dtype"] = dtype
    path = os.path.join(tmp, f"cfg_{dtype}.json")
    json.dump(c, open(path, "w"))
    # The first run warms the tokenizer cache, so the measured one times training only.
    subprocess.run([a.pcmoe, "train", "--config", path, "--out", os.path.join(tmp, f"warm_{dtype}"), "--until", "1"],
                   env=env, check=True, capture_output=True)
    subprocess.run([a.pcmoe, "train", "--config", path, "--out", os.path.join(tmp, f"run_{dtype}")],
                   env=env, check=True, capture_output=True, text=True)
    return json.load(open(os.path.join(tmp, f"run_{dtype}", "report.json")))


def bench(config_path, rate):
    cfg = json.load(open(config_path))
    cfg["train"].update({"steps": a.steps, "warmup": min(10, a.steps - 1), "eval_every": 0,
                         "checkpoint_every": 0, "threads": a.threads, "log_every": a.steps})
    cfg["data"]["path"] = os.path.join(ROOT, cfg["data"]["path"])
    cfg["data"]["cache_dir"] = os.path.join(ROOT, cfg["data"]["cache_dir"])
    tmp = tempfile.mkdtemp(prefix="pcmoe-bench-")
    runs = {d: run_pcmoe(cfg, d, tmp) for d in ("fp32", "bf16")}
    torch_cfg = os.path.join(tmp, "cfg_fp32.json")
    tp = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "torch_peer.py"), "--config", torch_cfg,
                         "--steps", str(a.steps), "--threads", str(a.threads)],
                        env=env, check=True, capture_output=True, text=True)
    th = json.loads(tp.stdout.strip().splitlines()[-1])
    m = cfg["model"]
    flops = model_flops_per_token(m)
    print(f"\n== {os.path.relpath(config_path, ROOT)}: d_model {m['d_model']}, {m['n_layers']} layers, "
          f"{m['n_experts']} experts top-{m['top_k']}, d_ff {m['d_ff']}, "
          f"{'tied' if m['tie_embeddings'] else 'untied'} head, {runs['fp32']['parameters']} parameters; "
          f"batch {cfg['train']['batch_size']}x{m['seq_len']}; {a.steps} steps; {flops / 1e6:.1f} MFLOP per token")
    print(f"{'':14} {'tokens/s':>10} {'GFLOP/s':>8} {'of fp32 rate':>13} {'peak RSS MiB':>13}")
    rows = [(f"pcmoe {d}", runs[d]["tokens_per_s"], runs[d]["peak_rss_bytes"]) for d in ("fp32", "bf16")]
    rows.append(("torch fp32", th["tokens_per_s"], th["peak_rss_bytes"]))
    for name, tps, rss in rows:
        g = tps * flops / 1e9
        print(f"{name:14} {tps:10.0f} {g:8.1f} {g / rate['fp32_gflops']:13.0%} {rss / 2**20:13.1f}")
    print(f"ratio pcmoe fp32/torch tokens/s: {runs['fp32']['tokens_per_s'] / th['tokens_per_s']:.2f}")
    print(f"ratio pcmoe bf16/torch tokens/s: {runs['bf16']['tokens_per_s'] / th['tokens_per_s']:.2f}")
    best = max(runs, key=lambda d: runs[d]["tokens_per_s"])
    return best, runs[best]["tokens_per_s"] / th["tokens_per_s"], th


rate = json.loads(subprocess.run([a.gemm_rate, str(a.threads)], env=env, check=True, capture_output=True,
                                 text=True).stdout.strip().splitlines()[-1])
torch_version = subprocess.run(["/usr/bin/python3", "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True).stdout.strip()
print(f"CPU: {cpu_line()}; {a.threads} threads; OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'passive (pcmoe default)')}")
print(f"pcmoe kernels: {rate['kernels']}")
print(f"torch {torch_version} (fp32; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']})")
print(f"machine product rate, 1024^3, {a.threads} threads: fp32 {rate['fp32_gflops']:.0f} GFLOP/s, "
      f"bf16 {rate['bf16_gflops']:.0f} GFLOP/s")
for path in a.configs:
    best, ratio, _ = bench(path, rate)
print(f"(pcmoe at its faster dtype, {best}, on {os.path.basename(a.configs[-1])})")
print(f"ratio pcmoe/torch tokens/s: {ratio:.2f}")
