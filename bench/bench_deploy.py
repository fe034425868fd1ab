"""PC-MoE deployed as n processes over gRPC against the in-process simulation and a centralised
process: training throughput, bytes on the wire per token for each wire dtype, validation loss,
and peak RSS of each party process beside one centralised process, on the same config, seed and
turns.

    /usr/bin/python3 bench/bench_deploy.py [--pcmoe build/pcmoe] [--config configs/collab.json] [--steps 10] [--threads T] [--compute-dtype bf16]

For each collab.wire_dtype (fp32, bf16, fp16) it runs `pcmoe collab` (pc-moe only) and `pcmoe
launch` with mutual TLS, and for fp32 also `pcmoe launch --insecure` (plaintext on loopback),
each for --steps rounds of every party; then `pcmoe train` of the same model and batch on the
pooled corpus for --steps steps (the centralised process). Throughput is trained tokens over
the training time: the simulation's pc-moe train_seconds; for a deployment, the longest party's
time from its first turn to the end of the last (data loading, joining and evaluation excluded;
the launcher's wall time, which includes them, is shown beside it). Bytes per token are payload
bytes each party sends plus receives per token it trains (mean over parties); a deployment
counts them as the simulation does, so the two must agree (the benchmark fails otherwise). Validation loss is the mean over
parties of their loss on their own held-out data. Peak RSS is each process's high-water mark
(getrusage). Start to join is, for the slowest party of each launch, the time from its process
start to the coordinator's answer that all parties have joined. The losses of every turn of a deployment must be identical to the simulation's of
the same dtype, or the benchmark fails."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchlib import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "collab.json"))
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--threads", type=int, help="train.threads of every process (default: the config's)")
ap.add_argument("--compute-dtype", default="fp32", choices=["fp32", "bf16"], help="model.compute_dtype of every process")
a = ap.parse_args()


base = json.load(open(a.config))
n = base.get("parties", {}).get("n_parties", 4)
base["train"]["steps"] = a.steps
base["train"]["warmup"] = min(base["train"].get("warmup", 50), a.steps - 1)
base["train"]["eval_windows"] = 8
base["model"]["compute_dtype"] = a.compute_dtype
if a.threads:
    base["train"]["threads"] = a.threads
tmp = tempfile.mkdtemp(prefix="pcmoe-bench-deploy-")


def config(dtype):
    cfg = json.loads(json.dumps(base))
    cfg["collab"] = {"modes": ["pc-moe"], "wire_dtype": dtype}
    cfg["deploy"] = {"parties": [{"name": f"party{i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(free_ports(n))]}
    path = os.path.join(tmp, f"{dtype}.json")
    json.dump(cfg, open(path, "w"))
    return path


def pcmoe(*args):
    p = subprocess.run([a.pcmoe, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"pcmoe {' '.join(args)} failed:\n{p.stderr[-3000:]}")


def metrics(d):
    return [(m["round"], m["party"], m["loss"], m["ce"], m["grad_norm"]) for m in
            (json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()) if m["mode"] == "pc-moe"]


m, t = base["model"], base["train"]
tokens_per_turn = t["batch_size"] * t.get("grad_accum", 1) * m["seq_len"]
tokens = n * a.steps * tokens_per_turn
print(f"compute dtype {a.compute_dtype}; threads per process: {t['threads']}; {n} parties, {a.steps} rounds of {tokens_per_turn} tokens per turn = {tokens} tokens; "
      f"model d_model {m['d_model']}, {m['n_layers']} layers, {m['n_experts']} experts top-{m['top_k']}")

MiB = 1048576
rows, rss, joins = [], [], []
for dtype in ("fp32", "bf16", "fp16"):
    path = config(dtype)
    sim_dir = os.path.join(tmp, f"sim-{dtype}")
    pcmoe("collab", "--config", path, "--out", sim_dir)
    sim = json.load(open(os.path.join(sim_dir, "report.json")))["modes"]["pc-moe"]
    rows.append((f"in-process, {dtype}", sim["train_seconds"], None,
                 sum(p["bytes_sent_per_token"] + p["bytes_received_per_token"] for p in sim["parties"]) / n,
                 sum(p["val_loss_own"] for p in sim["parties"]) / n))
    runs = [("mutual TLS", [])] + ([("plaintext", ["--insecure"])] if dtype == "fp32" else [])
    for name, extra in runs:
        d = os.path.join(tmp, f"{dtype}-{name.replace(' ', '-')}")
        pcmoe("launch", "--config", path, "--out", d, *extra)
        if metrics(d) != metrics(sim_dir):
            sys.exit(f"{n} processes, {name}, {dtype}: the per-turn losses differ from the simulation's")
        rep = json.load(open(os.path.join(d, "report.json")))
        parties = [p["report"] for p in rep["parties"]]
        per_token = lambda ps: [(p["bytes_sent_per_token"], p["bytes_received_per_token"]) for p in ps]
        if per_token(parties) != per_token(sim["parties"]):
            sys.exit(f"{n} processes, {name}, {dtype}: the bytes on the wire differ from the simulation's")
        joins.append(max(p["started_to_joined_s"] for p in parties))
        rows.append((f"{n} processes, {name}, {dtype}", max(p["train_seconds"] for p in parties), rep["wall_seconds"],
                     sum(p["bytes_sent_per_token"] + p["bytes_received_per_token"] for p in parties) / n,
                     sum(p["val_loss_own"] for p in parties) / n))
        if dtype == "fp32" and name == "mutual TLS":
            rss = [p["peak_rss_bytes"] for p in parties]

central = json.loads(json.dumps(base))
central.pop("parties", None)
central["collab"] = {"modes": ["centralised"]}
central["train"]["eval_every"] = 0
cpath = os.path.join(tmp, "central.json")
json.dump(central, open(cpath, "w"))
pcmoe("train", "--config", cpath, "--out", os.path.join(tmp, "central"))
central_rss = json.load(open(os.path.join(tmp, "central", "report.json")))["peak_rss_bytes"]

print(f"{'':34} {'train s':>8} {'tokens/s':>9} {'wall s':>7} {'bytes/token':>12} {'val loss':>9}")
for name, secs, wall, bpt, loss in rows:
    print(f"{name:34} {secs:8.2f} {tokens / secs:9.0f} {wall if wall else float('nan'):7.1f} {bpt:12.0f} {loss:9.4f}")
fp32 = rows[0][3]
print("bytes/token relative to fp32: " + ", ".join(f"{r[0].split(', ')[-1]} {r[3] / fp32:.3f}" for r in rows if r[0].startswith("in-process")))
print(f"deployed/in-process throughput (fp32): TLS {rows[0][1] / rows[1][1]:.3f}, plaintext {rows[0][1] / rows[2][1]:.3f}; "
      "per-turn losses identical to the simulation in every dtype")
print("start to all joined, s (the slowest party of each launch: process start, data loading, TLS, join): " +
      ", ".join(f"{j:.2f}" for j in joins))
print("peak RSS MiB: centralised process (pcmoe train) {:.1f}; party processes {}; ratio {}".format(
    central_rss / MiB, ", ".join(f"{r / MiB:.1f}" for r in rss), ", ".join(f"{r / central_rss:.3f}" for r in rss)))
