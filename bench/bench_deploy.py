"""PC-MoE deployed as 4 processes over gRPC against the in-process simulation: training
throughput and bytes on the wire per token, on the same config, seed and turns.

    /usr/bin/python3 bench/bench_deploy.py [--pcmoe build/pcmoe] [--config configs/collab.json] [--steps 10] [--threads T]

Runs `pcmoe collab` (pc-moe only), then `pcmoe launch` with mutual TLS and with --insecure
(plaintext on loopback), each for --steps rounds of every party. Throughput is trained tokens
over the training time: the simulation's pc-moe train_seconds; for a deployment, the longest
party's time from its first turn to the end of the last (data loading, joining and evaluation
excluded; the launcher's wall time, which includes them, is shown beside it). Bytes per token
are payload bytes each party sends plus receives per token it trains (mean over parties); a
deployment counts them as the simulation does, so the two must agree. The losses of every turn
must be identical, or the benchmark fails."""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "collab.json"))
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--threads", type=int, help="train.threads of every process (default: the config's)")
a = ap.parse_args()


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


cfg = json.load(open(a.config))
n = cfg.get("parties", {}).get("n_parties", 4)
cfg["train"]["steps"] = a.steps
cfg["train"]["warmup"] = min(cfg["train"].get("warmup", 50), a.steps - 1)
cfg["train"]["eval_windows"] = 8
if a.threads:
    cfg["train"]["threads"] = a.threads
cfg["collab"] = {"modes": ["pc-moe"]}
cfg["deploy"] = {"parties": [{"name": f"party{i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(free_ports(n))]}
tmp = tempfile.mkdtemp(prefix="pcmoe-bench-deploy-")
path = os.path.join(tmp, "cfg.json")
json.dump(cfg, open(path, "w"))


def pcmoe(*args):
    p = subprocess.run([a.pcmoe, *args], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"pcmoe {' '.join(args)} failed:\n{p.stderr[-3000:]}")


def metrics(d):
    return [(m["round"], m["party"], m["loss"], m["ce"], m["grad_norm"]) for m in
            (json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()) if m["mode"] == "pc-moe"]


m, t = cfg["model"], cfg["train"]
tokens_per_turn = t["batch_size"] * t.get("grad_accum", 1) * m["seq_len"]
tokens = n * a.steps * tokens_per_turn
print(f"threads per process: {t['threads']}; {n} parties, {a.steps} rounds of {tokens_per_turn} tokens per turn = {tokens} tokens; "
      f"model d_model {m['d_model']}, {m['n_layers']} layers, {m['n_experts']} experts top-{m['top_k']}")

sim_dir = os.path.join(tmp, "sim")
pcmoe("collab", "--config", path, "--out", sim_dir)
sim = json.load(open(os.path.join(sim_dir, "report.json")))["modes"]["pc-moe"]
rows = [("in-process", sim["train_seconds"], None,
         sum(p["bytes_sent_per_token"] + p["bytes_received_per_token"] for p in sim["parties"]) / n)]
for name, extra in (("4 processes, mutual TLS", []), ("4 processes, plaintext", ["--insecure"])):
    d = os.path.join(tmp, name.split(",")[1].strip().replace(" ", "-"))
    pcmoe("launch", "--config", path, "--out", d, *extra)
    if metrics(d) != metrics(sim_dir):
        sys.exit(f"{name}: the per-turn losses differ from the simulation's")
    rep = json.load(open(os.path.join(d, "report.json")))
    parties = [p["report"] for p in rep["parties"]]
    rows.append((name, max(p["train_seconds"] for p in parties), rep["wall_seconds"],
                 sum(p["bytes_sent_per_token"] + p["bytes_received_per_token"] for p in parties) / n))
print(f"{'':26} {'train s':>8} {'tokens/s':>9} {'wall s':>7} {'bytes/token':>12}")
for name, secs, wall, bpt in rows:
    print(f"{name:26} {secs:8.2f} {tokens / secs:9.0f} {wall if wall else float('nan'):7.1f} {bpt:12.0f}")
print(f"deployed/in-process throughput: TLS {rows[0][1] / rows[1][1]:.3f}, plaintext {rows[0][1] / rows[2][1]:.3f}; "
      "per-turn losses identical")
