"""Helpers for the end-to-end tests of the pcmoe command (no PyTorch needed)."""
import json
import os
import socket
import subprocess
import sys
import time

PCMOE = sys.argv[1]
SOURCE = sys.argv[2]
FAILURES = []
PASSES = []


def run(*args, cwd=None):
    """Runs pcmoe; returns (exit code, stdout, stderr)."""
    p = subprocess.run([PCMOE, *args], capture_output=True, text=True, cwd=cwd, timeout=900)
    return p.returncode, p.stdout, p.stderr


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    (PASSES if ok else FAILURES).append(what)


def finish():
    print(f"{len(PASSES)} passed, {len(FAILURES)} failed")
    if FAILURES:
        print("failed:", *FAILURES, sep="\n  ")
        sys.exit(1)


def tiny_corpus(root):
    """A small generated text corpus: two categories of simple, learnable sentences."""
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "green"]
    for cat in ("one", "two"):
        os.makedirs(os.path.join(root, cat), exist_ok=True)
        for d in range(6):
            lines = []
            for s in range(40):
                w = [words[(d * 7 + s * 3 + k * (2 if cat == "one" else 5)) % len(words)] for k in range(8)]
                lines.append(" ".join(w) + ".")
            with open(os.path.join(root, cat, f"doc{d}.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")


def tiny_config(data_dir, cache_dir, **train):
    cfg = {
        "model": {"vocab_size": 384, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                  "d_ff": 32, "d_ff_dense": 64, "n_experts": 4, "top_k": 2, "moe_every": 1,
                  "seq_len": 32},
        "train": {"batch_size": 4, "steps": 12, "warmup": 2, "lr": 0.01, "min_lr": 0.001,
                  "eval_every": 4, "eval_windows": 8, "log_every": 1, "threads": 2, "seed": 7},
        "data": {"corpus": "text", "path": data_dir, "cache_dir": cache_dir, "val_fraction": 0.2},
    }
    cfg["train"].update(train)
    return cfg


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def without_timings(x):
    """A report without its timings and RSS (they are measurements, not results)."""
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items()
                if k not in ("train_seconds", "wall_seconds", "peak_rss_bytes", "seconds", "cpu_seconds")}
    if isinstance(x, list):
        return [without_timings(v) for v in x]
    return x


def twice(config_path, tmp, what):
    """Runs `pcmoe collab` twice on one config (into tmp/a and tmp/b); both reports, and the
    first run's stdout. Stops the test if a run fails."""
    reports = []
    for name in ("a", "b"):
        code, out, err = run("collab", "--config", config_path, "--out", os.path.join(tmp, name))
        check(code == 0, f"collab run {name} {what}completes")
        if code:
            print(err[-3000:])
            finish()
        reports.append(json.load(open(os.path.join(tmp, name, "report.json"))))
    return reports, out


def start_parties(config, certs, out, n, procs, *extra, wrap=lambda i: []):
    """Starts `pcmoe party` for parties 0..n-1 of `config`, each writing out/party{i}/ and appending
    to out/party{i}.log (a resumed run keeps the first run's lines). `wrap(i)` is a command prefix
    for party i (e.g. a network namespace). The processes are added to `procs`, which the test kills
    on the way out, and returned."""
    ps = []
    for i in range(n):
        log = open(party_log_path(out, i), "a")
        ps.append(subprocess.Popen([*wrap(i), PCMOE, "party", "--config", config, "--party", str(i), "--certs", certs,
                                    "--out", os.path.join(out, f"party{i}"), *extra], stdout=log, stderr=log))
    procs.extend(ps)
    return ps


def party_log_path(out, i):
    return os.path.join(out, f"party{i}.log")


def party_log(out, i):
    """What party i has printed so far (see start_parties)."""
    with open(party_log_path(out, i)) as f:
        return f.read()


def wait_all(procs, limit):
    """Waits for the processes, at most `limit` seconds in all; kills those still running then.
    Their exit codes."""
    deadline = time.time() + limit
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def read_tensors(path):
    """A safetensors file's tensors: {name: raw bytes}, the metadata left out."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


def free_ports(n):
    """n TCP ports on loopback that are free right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def deploy_config(data_dir, cache_dir, n, steps=3, **deploy):
    """A tiny PC-MoE config for n parties (iid) with a deploy section on free loopback ports."""
    cfg = tiny_config(data_dir, cache_dir, steps=steps, warmup=1, eval_windows=4)
    cfg["data"]["val_fraction"] = 0.34
    cfg["parties"] = {"mode": "iid", "n_parties": n}
    cfg["collab"] = {"modes": ["pc-moe"]}
    cfg["deploy"] = {"parties": [{"name": f"party{i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(free_ports(n))]}
    cfg["deploy"].update(deploy)
    return cfg
