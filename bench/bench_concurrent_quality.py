"""Quality of concurrent rounds against sequential ones at equal tokens per party: validation
loss of every party on its own and on the pooled held-out documents, beside the centralised
model, on the demo config and on the fine-tuning config.

    /usr/bin/python3 bench/bench_concurrent_quality.py [--pcmoe build/pcmoe] [--steps N] [--out runs/concurrent_quality]

For configs/collab.json (from scratch) and configs/collab_finetune.json (from
runs/pretrain_public/checkpoint, trained first with configs/pretrain_public.json when missing) it
runs `pcmoe collab` with modes pc-moe and centralised under collab.schedule "sequential", then
pc-moe alone under "concurrent" with collab.expert_lr_scale 1 (the lr as given), sqrt(n) (the
square-root scaling rule for Adam: a concurrent round steps each expert once on the mean of n
parties' batches, an n times larger batch, where sequential rounds step it n times) and n (the
linear rule: the displacement of the n sequential steps a round replaces). Every run
trains train.steps turns per party (--steps overrides it) of the same batches. Prints one table
per config and writes out/summary.json. Losses do not depend on the load (only timings do)."""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--steps", type=int)
ap.add_argument("--out", default=os.path.join(ROOT, "runs", "concurrent_quality"))
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)


def pcmoe(*args):
    p = subprocess.run([a.pcmoe, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"pcmoe {' '.join(args)} failed:\n{p.stderr[-3000:]}")


if not os.path.exists(os.path.join(ROOT, "runs", "pretrain_public", "checkpoint")):
    pcmoe("train", "--config", "configs/pretrain_public.json", "--out", "runs/pretrain_public")
summary = {}
for name in ("collab", "collab_finetune"):
    base = json.load(open(os.path.join(ROOT, "configs", name + ".json")))
    if a.steps:
        base["train"]["steps"] = a.steps
        base["train"]["warmup"] = min(base["train"]["warmup"], a.steps - 1)
    base["train"]["eval_every"] = 0
    n = base["parties"]["n_parties"]
    runs = {"sequential": ({"schedule": "sequential"}, ["pc-moe", "centralised"]),
            "concurrent, expert lr x1": ({"schedule": "concurrent"}, ["pc-moe"]),
            f"concurrent, expert lr x{math.sqrt(n):g} (sqrt n)": (
                {"schedule": "concurrent", "expert_lr_scale": math.sqrt(n)}, ["pc-moe"]),
            f"concurrent, expert lr x{n} (n)": ({"schedule": "concurrent", "expert_lr_scale": float(n)}, ["pc-moe"])}
    table = {}
    for label, (collab, modes) in runs.items():
        tag = f"{name}-{label.split(',')[0]}-{collab.get('expert_lr_scale', 1):g}"
        cfg = json.loads(json.dumps(base))
        cfg["collab"].update(collab)
        cfg["collab"]["modes"] = modes
        path = os.path.join(a.out, tag + ".json")
        # A run finished earlier with this very config is kept (the losses are deterministic).
        done = os.path.exists(os.path.join(a.out, tag, "report.json")) and json.load(open(path)) == cfg
        json.dump(cfg, open(path, "w"))
        if not done:
            pcmoe("collab", "--config", path, "--out", os.path.join(a.out, tag))
        rep = json.load(open(os.path.join(a.out, tag, "report.json")))
        table[label] = [(p["val_loss_own"], p["val_loss_pooled"]) for p in rep["modes"]["pc-moe"]["parties"]]
        if "centralised" in rep["modes"]:
            table["centralised"] = [(e["val_loss_own"], e["val_loss_pooled"]) for e in rep["modes"]["centralised"]["eval"]]
        print(f"{name}: {label} done ({rep['tokens_per_party']} tokens per party)", flush=True)
    summary[name] = table
    print(f"\n{name}: validation loss (nats), own / pooled held-out documents")
    print("party | " + " | ".join(table))
    for p in range(n):
        print(f"{p} | " + " | ".join(f"{v[p][0]:.3f} / {v[p][1]:.3f}" for v in table.values()))
    print("mean | " + " | ".join(f"{sum(x[0] for x in v) / n:.3f} / {sum(x[1] for x in v) / n:.3f}" for v in table.values()))
json.dump(summary, open(os.path.join(a.out, "summary.json"), "w"), indent=2)
