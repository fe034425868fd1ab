"""Training throughput and peak memory: pcmoe vs the PyTorch reference, same model, same
steps, same batch shape, fp32, same thread count, measured side by side in one run.

    /usr/bin/python3 bench/bench_train.py [--config configs/small.json] [--steps 60] [--threads 2]

pcmoe trains on the Brown corpus (its tokens/s counts optimizer steps only, not data loading);
the PyTorch peer trains on random token windows of the same shape. Both use OpenBLAS with the
same kernel choice (OPENBLAS_CORETYPE, as pcmoe sets it itself). The last line is
`ratio pcmoe/torch tokens/s: X`."""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "small.json"))
ap.add_argument("--steps", type=int, default=60)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()

cfg = json.load(open(a.config))
cfg["train"].update({"steps": a.steps, "warmup": min(10, a.steps - 1), "eval_every": 0,
                     "checkpoint_every": 0, "threads": a.threads, "log_every": a.steps})
cfg["data"]["path"] = os.path.join(ROOT, cfg["data"]["path"])
cfg["data"]["cache_dir"] = os.path.join(ROOT, cfg["data"]["cache_dir"])
tmp = tempfile.mkdtemp(prefix="pcmoe-bench-")
cfg_path = os.path.join(tmp, "cfg.json")
json.dump(cfg, open(cfg_path, "w"))

env = dict(os.environ)
if "OPENBLAS_CORETYPE" not in env:
    # pcmoe picks SkylakeX / Haswell from the CPU flags; do the same
    flags = open("/proc/cpuinfo").read()
    env["OPENBLAS_CORETYPE"] = "SkylakeX" if " avx512bw" in flags else "Haswell"
env["OMP_NUM_THREADS"] = str(a.threads)

# Warm the tokenizer cache so pcmoe's run measures training, not tokenizer training.
subprocess.run([a.pcmoe, "train", "--config", cfg_path, "--out", os.path.join(tmp, "warm"), "--until", "1"],
               env=env, check=True, capture_output=True)
p = subprocess.run([a.pcmoe, "train", "--config", cfg_path, "--out", os.path.join(tmp, "run")],
                   env=env, check=True, capture_output=True, text=True)
pc = json.load(open(os.path.join(tmp, "run", "report.json")))
tp = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "torch_peer.py"), "--config", cfg_path,
                     "--steps", str(a.steps), "--threads", str(a.threads)],
                    env=env, check=True, capture_output=True, text=True)
th = json.loads(tp.stdout.strip().splitlines()[-1])

m = cfg["model"]
print(f"model: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_experts']} experts top-{m['top_k']}, "
      f"{pc['parameters']} parameters; batch {cfg['train']['batch_size']}x{m['seq_len']}; "
      f"{a.steps} steps; {a.threads} threads; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
print(f"{'':8} {'tokens/s':>10} {'peak RSS MiB':>13}")
print(f"{'pcmoe':8} {pc['tokens_per_s']:10.0f} {pc['peak_rss_bytes'] / 2**20:13.1f}")
print(f"{'torch':8} {th['tokens_per_s']:10.0f} {th['peak_rss_bytes'] / 2**20:13.1f}"
      f"   (torch {th['torch']}; RSS before the model was built: {th['rss_before_model_bytes'] / 2**20:.1f} MiB)")
print(f"pcmoe arena bytes: {json.dumps(pc['arena_bytes'])}")
print(f"ratio pcmoe/torch peak RSS: {pc['peak_rss_bytes'] / th['peak_rss_bytes']:.2f}")
print(f"ratio pcmoe/torch tokens/s: {pc['tokens_per_s'] / th['tokens_per_s']:.2f}")
