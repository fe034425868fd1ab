"""Parties in separate network namespaces (each its own address on a bridge, certificates for
those addresses): the link to one party is cut mid-run; the others stop within a bounded time
naming it; once the link is back, --resume on every party finishes the run with exactly the
per-turn losses, final weights and final validation losses of an uninterrupted run (the
simulation).

The parties checkpoint together every 2 rounds (deploy.checkpoint_every); the link is cut after
round 4 has begun, and the resumed run continues from the last checkpoint all of them completed.
Needs root for `ip netns`; otherwise it says why
and exits 77, which ctest reports as skipped."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from common import (check, deploy_config, finish, party_log, read_metrics, read_tensors, run, start_parties, tiny_corpus,
                    wait_all, write_json)

SKIP = 77
TAG = f"pcm{os.getpid() % 100000}"
NS = [f"{TAG}-p{i}" for i in range(3)]
SWITCH = f"{TAG}-sw"


def ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def must(r, what):
    if r.returncode:
        raise RuntimeError(f"{what}: {r.stderr.strip()}")


if os.geteuid() != 0:
    print("SKIP: network namespaces (ip netns) need root; this test was not run")
    sys.exit(SKIP)
probe = ip("netns", "add", SWITCH)
if probe.returncode:
    print(f"SKIP: ip netns is unavailable here ({probe.stderr.strip()}); this test was not run")
    sys.exit(SKIP)

tmp = tempfile.mkdtemp(prefix="pcmoe-netns-")
procs = []
try:
    # A switch namespace holds a bridge; party i's namespace reaches it over a veth pair
    # (v<i> inside the party, s<i> on the bridge) and has the address 10.213.0.(i+1).
    must(ip("link", "add", "br0", "type", "bridge", ns=SWITCH), "bridge")
    must(ip("link", "set", "br0", "up", ns=SWITCH), "bridge up")
    for i, ns in enumerate(NS):
        must(ip("netns", "add", ns), "netns add")
        must(ip("link", "add", f"{TAG}v{i}", "netns", ns, "type", "veth", "peer", "name", f"{TAG}s{i}", "netns", SWITCH),
             "veth")
        must(ip("link", "set", f"{TAG}s{i}", "master", "br0", "up", ns=SWITCH), "veth on bridge")
        must(ip("addr", "add", f"10.213.0.{i + 1}/24", "dev", f"{TAG}v{i}", ns=ns), "address")
        must(ip("link", "set", f"{TAG}v{i}", "up", ns=ns), "veth up")
        must(ip("link", "set", "lo", "up", ns=ns), "loopback up")

    data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
    tiny_corpus(data_dir)
    cfg = deploy_config(data_dir, cache, 3, steps=12, checkpoint_every=2, dead_after_s=1, call_timeout_s=2,
                        join_timeout_s=20)
    cfg["deploy"]["parties"] = [{"name": f"party{i}", "address": f"10.213.0.{i + 1}:7000"} for i in range(3)]
    path = os.path.join(tmp, "cfg.json")
    write_json(path, cfg)
    certs = os.path.join(tmp, "certs")
    check(run("certs", "--config", path, "--out", certs)[0] == 0, "certificates for the namespaced addresses")

    def start(*extra):
        return start_parties(path, certs, tmp, len(NS), procs, *extra, wrap=lambda i: ["ip", "netns", "exec", NS[i]])

    def log(i):
        return party_log(tmp, i)

    # Once party 2 has trained a turn of round 4 or later, cut its link.
    ps = start()
    deadline = time.time() + 60
    while time.time() < deadline and not re.search(r"party2: turn \d+ \(round ([4-9]|1\d)\)", log(2)):
        time.sleep(0.02)
    must(ip("link", "set", f"{TAG}s2", "down", ns=SWITCH), "cut party 2's link")
    t0 = time.time()
    others = wait_all(ps[:2], 20)
    elapsed = time.time() - t0
    wait_all(ps[2:], 20)
    check(all(c not in (0, None) for c in others), f"parties 0 and 1 exit non-zero when party 2's link is cut ({others})")
    # bound: the first failed call or the watchdog (call_timeout_s 2, dead_after_s 1), then party 0
    # lingers up to 2 s so the others hear why, then a server shutdown grace of up to 2 s
    check(elapsed < 2 + 2 + 2 + 2, f"they stopped {elapsed:.2f} s after the cut (dead_after_s 1, call_timeout_s 2)")
    for i in (0, 1):
        last = log(i).strip().splitlines()[-1]
        check("party2" in last and "error" in last, f"party {i} names party2: {last[:200]}")
    trained = [int(t) for t in re.findall(r"party\d: turn (\d+)", "".join(log(i) for i in range(3)))]
    check(trained and max(trained) < 36, f"the cut came mid-run (last turn trained: {max(trained) if trained else None})")

    must(ip("link", "set", f"{TAG}s2", "up", ns=SWITCH), "restore party 2's link")
    held = {i: sorted(os.listdir(os.path.join(tmp, f"party{i}", "checkpoint"))) for i in range(3)}
    print(f"checkpoints after the cut: {held}")
    T0 = time.time()
    codes = wait_all(start("--resume"), 60)
    print(f"resumed to the end: {time.time() - T0:.1f} s")
    resumed_at = re.findall(r"training turns (\d+)\.\.", log(0))
    check(len(resumed_at) == 2 and int(resumed_at[1]) >= 12 and int(resumed_at[1]) % 6 == 0,
          f"the resumed run continued from a common checkpoint at or after round 4 (turn {resumed_at[-1] if resumed_at else None})")
    check(codes == [0, 0, 0], f"with the link back, --resume on every party finishes the run ({codes})")

    code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "sim"))
    check(code == 0, "the uninterrupted run (simulation) of the same config")
    sim = {(m["round"], m["party"]): m for m in read_metrics(os.path.join(tmp, "sim", "metrics.jsonl")) if m["mode"] == "pc-moe"}
    lines = [m for i in range(3) for m in read_metrics(os.path.join(tmp, f"party{i}", "metrics.jsonl"))]
    dep = {(m["round"], m["party"]): m for m in lines}
    check(len(dep) == len(lines), "each turn once in the parties' metrics (a resumed party keeps the lines before its checkpoint)")
    check(sorted(dep) == sorted(sim) and len(sim) == 36, f"all {len(sim)} turns trained ({len(dep)})")
    check(all(all(dep[k][f] == sim[k][f] for f in ("loss", "ce", "lr", "grad_norm")) for k in sim if k in dep),
          "every turn's loss and gradient norm identical to the uninterrupted run's")
    srep = json.load(open(os.path.join(tmp, "sim", "report.json")))["modes"]["pc-moe"]["parties"]
    for i in range(3):
        r = json.load(open(os.path.join(tmp, f"party{i}", "report.json")))
        check(r["val_loss_own"] == srep[i]["val_loss_own"], f"party {i}: final validation loss {r['val_loss_own']:.6f} as uninterrupted")
        # The simulation saves each party's whole model (its backbone and every host's experts);
        # the party holds its backbone and its shard: each of their tensors must be the same.
        whole = read_tensors(os.path.join(tmp, "sim", f"party{i}", "checkpoint", "model.safetensors"))
        held = {}
        for part in ("backbone", "shard"):
            held.update(read_tensors(os.path.join(tmp, f"party{i}", "checkpoint", "turn36", part, "model.safetensors")))
        weights = {k: v for k, v in held.items() if not k.startswith("adam_")}
        check(len(weights) > 10 and all(whole[k] == v for k, v in weights.items()),
              f"party {i}: its {len(weights)} final weight tensors equal the uninterrupted run's bit for bit")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for ns in NS + [SWITCH]:
        ip("netns", "del", ns)
    shutil.rmtree(tmp, ignore_errors=True)
    left = [n for n in ip("netns", "list").stdout.split() if n.startswith(TAG)]
    check(not left, f"network namespaces removed ({left})")
finish()
