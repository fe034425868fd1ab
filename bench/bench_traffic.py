"""Traffic of the two PC-MoE exchanges (collab.exchange): bytes per trained token and where they
cross. The activations exchange moves a number of bytes per routed token; the weights exchange a
fixed number per turn (every remote expert's weights twice and its gradient sum once), so past
some batch size the weights exchange moves less. Counted, not timed: the byte counts are exact
and do not depend on the machine or its load.

    /usr/bin/python3 bench/bench_traffic.py [--config configs/collab.json] [--rounds 1]

For each exchange it runs `pcmoe collab` (pc-moe only, `--rounds` rounds of every party) and
reads report.json's traffic: bytes per turn (all parties, both directions, control included)
and per trained token. The crossover batch size B* solves W = c + a·B, with W the weights
exchange's bytes per turn, c the control bytes per turn (the same in both) and a the
activations exchange's expert-call bytes per sequence of the measured turns (routing-dependent:
the rows that reach another party's experts); B* = (W − c) / a, in sequences of seq_len tokens."""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "collab.json"))
ap.add_argument("--rounds", type=int, default=1)
a = ap.parse_args()

base = json.load(open(a.config))
tmp = tempfile.mkdtemp(prefix="pcmoe-bench-traffic-")


def run(exchange):
    cfg = json.loads(json.dumps(base))
    cfg.setdefault("collab", {})
    cfg["collab"].update({"modes": ["pc-moe"], "exchange": exchange})
    cfg["train"].update({"steps": a.rounds, "warmup": 0, "eval_every": 0, "eval_windows": 1, "checkpoint_every": 0})
    for key in ("path", "cache_dir"):
        if key in cfg.get("data", {}):
            cfg["data"][key] = os.path.join(ROOT, cfg["data"][key])
    path = os.path.join(tmp, exchange + ".json")
    json.dump(cfg, open(path, "w"))
    out = os.path.join(tmp, exchange)
    subprocess.run([a.pcmoe, "collab", "--config", path, "--out", out], check=True, capture_output=True)
    rep = json.load(open(os.path.join(out, "report.json")))["modes"]["pc-moe"]
    n = len(rep["parties"])
    turns = n * a.rounds
    tokens = sum(p["tokens_trained"] for p in rep["parties"])
    total = sum(t["bytes"] for t in rep["traffic"])
    control = sum(t["bytes"] for t in rep["traffic"] if t["kind"] == "control")
    kinds = sorted({t["kind"] for t in rep["traffic"]})
    return {"parties": n, "turns": turns, "tokens": tokens, "bytes_per_turn": total / turns,
            "control_per_turn": control / turns, "bytes_per_token": total / tokens, "kinds": kinds}


t = base["train"]
seq_per_turn = t.get("batch_size", 16) * t.get("grad_accum", 1)
act, wts = run("activations"), run("weights")
a_per_seq = (act["bytes_per_turn"] - act["control_per_turn"]) / seq_per_turn
crossover = (wts["bytes_per_turn"] - wts["control_per_turn"]) / a_per_seq
result = {"config": os.path.relpath(a.config, ROOT), "parties": act["parties"], "sequences_per_turn": seq_per_turn,
          "activations": act, "weights": wts, "activation_bytes_per_sequence": a_per_seq,
          "crossover_sequences_per_turn": crossover}
print(json.dumps(result, indent=1))
print(f"{result['config']}: {act['parties']} parties, {seq_per_turn} sequences per turn: activations "
      f"{act['bytes_per_token']:.0f} B/token, weights {wts['bytes_per_token']:.0f} B/token; "
      f"weights moves less from {crossover:.1f} sequences per turn on")
