"""Concurrent rounds (collab.schedule "concurrent", docs/protocol.md): the simulation (one thread
per party) and the deployment (one process per party, each host serving while its party trains)
give the same per-turn losses, validation losses and bytes per token, bit for bit, in both
exchanges; one concurrent party is the sequential schedule; DP-SGD runs concurrently in the
simulation; and a party killed mid-round stops the round for everyone, naming it, after which
--resume finishes the run exactly as an unbroken one."""
import filecmp
import json
import os
import re
import shutil
import signal
import tempfile
import time

from common import check, deploy_config, finish, party_log, read_metrics, run, start_parties, tiny_corpus, wait_all, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-concurrent-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
turns = lambda ms: [(m["round"], m["party"], m["loss"], m["ce"], m["lr"], m["grad_norm"]) for m in ms]


def pcmoe_lines(run_dir):
    return [m for m in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if m["mode"] == "pc-moe"]


def concurrent(n, **deploy):
    # One compute thread per party in both: numbers depend on the thread count (docs/protocol.md).
    cfg = deploy_config(data_dir, cache, n, steps=4, join_timeout_s=30, **deploy)
    cfg["train"]["threads"] = 1
    cfg["collab"]["schedule"] = "concurrent"
    return cfg


# (a) 3 parties over TLS = the simulation, in both exchanges; large calls streamed in 4 KiB chunks.
for exchange in ("activations", "weights"):
    cfg = concurrent(3, chunk_bytes=4096, max_message_bytes=8192)
    cfg["collab"]["exchange"] = exchange
    path = os.path.join(tmp, f"{exchange}.json")
    write_json(path, cfg)
    sim, dep = os.path.join(tmp, f"sim-{exchange}"), os.path.join(tmp, f"dep-{exchange}")
    code, out, err = run("collab", "--config", path, "--out", sim)
    check(code == 0, f"{exchange}: the concurrent simulation runs")
    code, out, err = run("launch", "--config", path, "--out", dep)
    check(code == 0, f"{exchange}: 3 party processes train concurrent rounds over mutual TLS")
    if code:
        print(err[-2000:])
        for p in range(3):
            print(open(os.path.join(dep, f"party{p}.log")).read()[-1500:])
        finish()
    s, d = pcmoe_lines(sim), read_metrics(os.path.join(dep, "metrics.jsonl"))
    check(len(s) == 12 and [(m["round"], m["party"]) for m in s] == [(r, p) for r in range(4) for p in range(3)],
          f"{exchange}: every party trains every round, listed in party order")
    check(turns(d) == turns(s), f"{exchange}: every deployed turn's loss, cross-entropy, lr and gradient norm as simulated")
    srep = json.load(open(os.path.join(sim, "report.json")))["modes"]["pc-moe"]["parties"]
    drep = json.load(open(os.path.join(dep, "report.json")))["parties"]
    for p in range(3):
        r = drep[p]["report"]
        check(r["val_loss_own"] == srep[p]["val_loss_own"] and
              r["bytes_sent_per_token"] == srep[p]["bytes_sent_per_token"] and
              r["bytes_received_per_token"] == srep[p]["bytes_received_per_token"],
              f"{exchange}, party {p}: validation loss {r['val_loss_own']:.6f} and bytes per token as simulated")
    if exchange == "activations":
        log = open(os.path.join(dep, "party0.log")).read()
        # The coordinator logs each turn done: within a round the parties finish in any order, but
        # no turn of round r+1 is done before every turn of round r.
        done = [int(t) for t in re.findall(r"coordinator: turn (\d+) of", log)]
        check(sorted(done) == list(range(12)) and all(max(done[:i]) < (done[i] // 3 + 1) * 3 for i in range(1, 12)),
              f"{exchange}: the coordinator closes each round before the next begins ({done})")
        seq = json.loads(json.dumps(cfg))
        seq["collab"].pop("schedule")
        write_json(os.path.join(tmp, "seq.json"), seq)
        check(run("collab", "--config", os.path.join(tmp, "seq.json"), "--out", os.path.join(tmp, "seq"))[0] == 0,
              "the sequential twin runs")
        q = pcmoe_lines(os.path.join(tmp, "seq"))
        check(sorted(turns(q)) != sorted(turns(s)), "concurrent rounds train other numbers than sequential turns")

# (a') the leakage audit's tap: the observer (party 0) receives every party's calls at once, holds
# each round's payloads and writes them in party order, so its process records the simulation's
# bytes, the senders' truths join to the simulation's, and the audits agree.
aud = concurrent(3)
aud["train"]["steps"] = 6
aud["audit"] = {"observer": 0, "record_every": 3}
write_json(os.path.join(tmp, "audit.json"), aud)
asim, adep = os.path.join(tmp, "audit-sim"), os.path.join(tmp, "audit-dep")
code = run("collab", "--config", os.path.join(tmp, "audit.json"), "--out", asim)[0]
code |= run("launch", "--config", os.path.join(tmp, "audit.json"), "--out", adep)[0]
check(code == 0, "an audited concurrent run, simulated and deployed")
check(code == 0 and filecmp.cmp(os.path.join(asim, "audit", "recording.bin"),
                                os.path.join(adep, "party0", "audit", "recording.bin"), shallow=False),
      "the observer's process recorded exactly the simulation's tap's bytes")
audits = [run("audit", "--run", r, "--out", r + "-audit", "--public-windows", "16")[0] for r in (asim, adep)]
check(audits == [0, 0] and filecmp.cmp(os.path.join(asim, "audit", "truth.bin"), os.path.join(adep, "audit", "truth.bin"),
                                       shallow=False), "the senders' truths join to the simulation's truth.bin")
cells = [json.load(open(r + "-audit/audit.json"))["cells"] if a == 0 else None for r, a in zip((asim, adep), audits)]
check(cells[0] and cells[0] == cells[1], "the attack results of the deployment are the simulation's")

# (b) one party: a concurrent round is a sequential turn, bit for bit (and the report's memory
# counts no second slot).
one = concurrent(1)
one["parties"]["n_parties"] = 1
write_json(os.path.join(tmp, "one-c.json"), one)
one_seq = json.loads(json.dumps(one))
one_seq["collab"].pop("schedule")
write_json(os.path.join(tmp, "one-s.json"), one_seq)
ok = all(run("collab", "--config", os.path.join(tmp, f"one-{k}.json"), "--out", os.path.join(tmp, f"one-{k}"))[0] == 0
         for k in "cs")
check(ok and turns(pcmoe_lines(os.path.join(tmp, "one-c"))) == turns(pcmoe_lines(os.path.join(tmp, "one-s"))),
      "one party: every concurrent turn's numbers are the sequential ones")
mem = lambda k: json.load(open(os.path.join(tmp, f"one-{k}", "report.json")))["modes"]["pc-moe"]["parties"][0]["memory"]
check(ok and mem("c") == mem("s") and mem("c")["host_slots"] == 0, "one party: the same planned memory, no extra slot")

# (c) DP-SGD in concurrent rounds (the simulation: deployed parties do not carry DP-SGD turns).
dp = concurrent(3)
dp["privacy"] = {"sampling_rate": 0.3, "noise_multiplier": 1.0, "clip": 0.5, "test_seed": 3}
write_json(os.path.join(tmp, "dp.json"), dp)
code, out, err = run("collab", "--config", os.path.join(tmp, "dp.json"), "--out", os.path.join(tmp, "dp-a"))
code2, _, _ = run("collab", "--config", os.path.join(tmp, "dp.json"), "--out", os.path.join(tmp, "dp-b"))
a, b = pcmoe_lines(os.path.join(tmp, "dp-a")), pcmoe_lines(os.path.join(tmp, "dp-b"))
check(code == 0 and code2 == 0 and len(a) == 12 and all("epsilon" in m for m in a),
      "DP-SGD runs in concurrent rounds, every party's budget reported")
check(turns(a) == turns(b), "DP-SGD concurrent rounds repeat bit for bit with a seed (threads and all)")
code, out, err = run("launch", "--config", os.path.join(tmp, "dp.json"), "--out", os.path.join(tmp, "dp-dep"))
check(code != 0, "a deployment with DP-SGD is still refused")

# (d) kill -9 of party 1 mid-round: the others stop within a bounded time, naming it (the calls
# to its host fail, or the coordinator presumes it dead); --resume on every party continues from
# the last common checkpoint and ends as the unbroken run.
N, STEPS = 3, 14
cfg = concurrent(N, checkpoint_every=2, dead_after_s=1, call_timeout_s=2)
cfg["train"]["steps"] = STEPS
path = os.path.join(tmp, "kill.json")
write_json(path, cfg)
ref = os.path.join(tmp, "ref")
check(run("launch", "--config", path, "--out", ref)[0] == 0, "the unbroken concurrent deployment")
certs = os.path.join(tmp, "certs")
check(run("certs", "--config", path, "--out", certs)[0] == 0, "certificates")
out = os.path.join(tmp, "killed")
os.makedirs(out)
procs = []


def start(*extra):
    return start_parties(path, certs, out, N, procs, *extra)


def log(i):
    return party_log(out, i)


def rounds_trained(i):
    return {int(r) for r in re.findall(rf"party{i}: turn \d+ \(round (\d+)\)", log(i))}


try:
    ps = start()
    deadline = time.time() + 90
    # Kill party 1 while it is inside a round: party 0 or 2 has trained a round (from round 5 on,
    # past the first checkpoints) that party 1 has not. Its contribution is missing, so no host can
    # close the round.
    behind = None
    while time.time() < deadline and behind is None:
        mine = rounds_trained(1)
        behind = next(iter(sorted(r for i in (0, 2) for r in rounds_trained(i) if r >= 5 and r not in mine)), None)
        if behind is None:
            time.sleep(0.005)
    os.kill(ps[1].pid, signal.SIGKILL)
    t0 = time.time()
    others = wait_all([ps[0], ps[2]], 20)
    elapsed = time.time() - t0
    ps[1].wait()
    check(all(c not in (0, None) for c in others), f"parties 0 and 2 exit non-zero after kill -9 of party 1 ({others})")
    check(elapsed < 8, f"they stopped {elapsed:.2f} s after the kill (dead_after_s 1, call_timeout_s 2)")
    for i in (0, 2):
        last = log(i).strip().splitlines()[-1]
        check("party1" in last and "error" in last, f"party {i} names party1: {last[:200]}")
    check(behind is not None and behind not in rounds_trained(1),
          f"the kill came mid-round: round {behind} trained by another party, not by party 1")
    code = wait_all(start("--resume"), 90)
    check(code == [0] * N, f"--resume on every party finishes the run ({code})")
    resumed_at = re.findall(r"training turns (\d+)\.\.", log(0))
    check(len(resumed_at) == 2 and int(resumed_at[1]) > 0 and int(resumed_at[1]) % (N * 2) == 0,
          f"the resumed run continued from a common checkpoint (turn {resumed_at[-1] if resumed_at else None})")
    for i in range(N):
        for part in ("backbone", "shard"):
            a = os.path.join(out, f"party{i}", "checkpoint", f"turn{N * STEPS}", part, "model.safetensors")
            b = os.path.join(ref, f"party{i}", "checkpoint", f"turn{N * STEPS}", part, "model.safetensors")
            check(filecmp.cmp(a, b, shallow=False), f"party {i}'s final {part} (weights and Adam moments) identical")
    dep = sorted([m for i in range(N) for m in read_metrics(os.path.join(out, f"party{i}", "metrics.jsonl"))],
                 key=lambda m: m["turn"])
    check(dep == read_metrics(os.path.join(ref, "metrics.jsonl")), "every turn's numbers as in the unbroken run")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
shutil.rmtree(tmp, ignore_errors=True)
finish()
