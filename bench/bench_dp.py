"""DP-SGD throughput: pcmoe with per-unit clipping against pcmoe without it, and against the
PyTorch reference clipping per sequence (fp32); same model, batch shape and threads, pcmoe in
each compute dtype, one run.

    /usr/bin/python3 bench/bench_dp.py [--config configs/small.json] [--steps 30] [--threads 2] [--compute-dtypes fp32 bf16]

pcmoe's DP run samples units by Poisson with q chosen so that the expected batch equals
train.batch_size sequences, so both pcmoe runs do the same work per step on average; its
tokens/s counts the sequences actually drawn. The PyTorch peer (bench/torch_dp_peer.py) takes
per-sample gradients with functorch's vmap. The last lines: the time of a DP step over a
non-DP step in pcmoe per dtype, and `ratio pcmoe-dp/torch-dp tokens/s: X` for pcmoe's faster DP
dtype."""
import argparse
import json
import os
import subprocess
import tempfile

from benchlib import cpu_line, torch_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "small.json"))
ap.add_argument("--steps", type=int, default=30)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--compute-dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                help="pcmoe's model.compute_dtype, one pair of runs each")
a = ap.parse_args()

cfg = json.load(open(a.config))
cfg["train"].update({"steps": a.steps, "warmup": min(10, a.steps - 1), "eval_every": 0, "eval_windows": 8,
                     "checkpoint_every": 0, "threads": a.threads, "log_every": a.steps})
cfg["data"]["path"] = os.path.join(ROOT, cfg["data"]["path"])
cfg["data"]["cache_dir"] = os.path.join(ROOT, cfg["data"]["cache_dir"])
tmp = tempfile.mkdtemp(prefix="pcmoe-bench-dp-")
env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
peer_env, peer_note = torch_env(env)


def train(name, c):
    path = os.path.join(tmp, name + ".json")
    json.dump(c, open(path, "w"))
    subprocess.run([a.pcmoe, "train", "--config", path, "--out", os.path.join(tmp, name)], env=env, check=True,
                   capture_output=True)
    return json.load(open(os.path.join(tmp, name, "report.json")))


B, T = cfg["train"]["batch_size"], cfg["model"]["seq_len"]
runs = {}
for dtype in a.compute_dtypes:
    c = json.loads(json.dumps(cfg))
    c["model"]["compute_dtype"] = dtype
    plain = train(f"plain_{dtype}", c)
    c["privacy"] = {"noise_multiplier": 1.0, "sampling_rate": 0.5, "clip": 1.0}
    probe = train(f"probe_{dtype}", dict(c, train=dict(c["train"], steps=1, warmup=0)))
    c["privacy"]["sampling_rate"] = B / probe["privacy"]["units"]
    runs[dtype] = (plain, train(f"dp_{dtype}", c))
tp = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "torch_dp_peer.py"), "--config",
                     os.path.join(tmp, f"dp_{a.compute_dtypes[0]}.json"), "--steps", str(max(3, a.steps // 5)),
                     "--threads", str(a.threads), "--batch", str(B)],
                    env=peer_env, check=True, capture_output=True, text=True)
th = json.loads(tp.stdout.strip().splitlines()[-1])

m = cfg["model"]
print(f"CPU: {cpu_line()}; {a.threads} threads; torch {th['torch']} fp32 ({peer_note})")
print(f"model: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_experts']} experts top-{m['top_k']}, "
      f"{plain['parameters']} parameters; {B} sequences of {T} a step (DP: expected)")
print(f"{'':22} {'tokens/s':>10} {'peak RSS MiB':>13}")
for dtype, (plain, dp) in runs.items():
    print(f"{'pcmoe ' + dtype:22} {plain['tokens_per_s']:10.0f} {plain['peak_rss_bytes'] / 2**20:13.1f}")
    print(f"{'pcmoe DP-SGD ' + dtype:22} {dp['tokens_per_s']:10.0f} {dp['peak_rss_bytes'] / 2**20:13.1f}")
print(f"{'torch DP-SGD (vmap)':22} {th['tokens_per_s']:10.0f} {th['peak_rss_bytes'] / 2**20:13.1f}")
for dtype, (plain, dp) in runs.items():
    print(f"pcmoe {dtype}: DP step time / non-DP step time (per token): "
          f"{plain['tokens_per_s'] / dp['tokens_per_s']:.2f}; DP against torch DP: {dp['tokens_per_s'] / th['tokens_per_s']:.2f}")
best = max(runs, key=lambda d: runs[d][1]["tokens_per_s"])
print(f"(pcmoe DP-SGD at its faster dtype, {best})")
print(f"ratio pcmoe-dp/torch-dp tokens/s: {runs[best][1]['tokens_per_s'] / th['tokens_per_s']:.2f}")
