"""kill -9 of one party process mid-run: the others stop within a bounded time, naming it; the
parties had checkpointed together every 2 rounds (deploy.checkpoint_every), and --resume on every
party continues from the last checkpoint all of them completed. The final weights and Adam
moments (every party's backbone and expert shard, byte for byte), every turn's numbers and the
final validation losses equal those of an uninterrupted deployment."""
import filecmp
import json
import os
import re
import shutil
import signal
import tempfile
import time

from common import check, deploy_config, finish, party_log, read_metrics, run, start_parties, tiny_corpus, wait_all, write_json

N, STEPS, EVERY = 3, 10, 2
tmp = tempfile.mkdtemp(prefix="pcmoe-kill-")
procs = []
try:
    data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
    tiny_corpus(data_dir)
    cfg = deploy_config(data_dir, cache, N, steps=STEPS, checkpoint_every=EVERY, dead_after_s=1, call_timeout_s=2,
                        join_timeout_s=20)
    path = os.path.join(tmp, "cfg.json")
    write_json(path, cfg)
    ref = os.path.join(tmp, "ref")
    code, _, err = run("launch", "--config", path, "--out", ref)
    check(code == 0, "the uninterrupted deployment")
    certs = os.path.join(tmp, "certs")
    check(run("certs", "--config", path, "--out", certs)[0] == 0, "certificates")
    out = os.path.join(tmp, "dep")

    def start(*extra):
        return start_parties(path, certs, out, N, procs, *extra)

    def log(i):
        return party_log(out, i)

    os.makedirs(out)
    ps = start()
    deadline = time.time() + 60
    while time.time() < deadline and not re.search(r"party1: turn (1[6-9]|2\d)", log(1)):
        time.sleep(0.01)
    os.kill(ps[1].pid, signal.SIGKILL)
    t0 = time.time()
    others = wait_all([ps[0], ps[2]], 20)
    elapsed = time.time() - t0
    ps[1].wait()
    check(all(c not in (0, None) for c in others), f"parties 0 and 2 exit non-zero after kill -9 of party 1 ({others})")
    # bound: the first failed call or the watchdog (call_timeout_s 2, dead_after_s 1), then party 0
    # lingers up to 2 s so the others hear why, then a server shutdown grace of up to 2 s
    check(elapsed < 8, f"they stopped {elapsed:.2f} s after the kill (dead_after_s 1, call_timeout_s 2)")
    for i in (0, 2):
        last = log(i).strip().splitlines()[-1]
        check("party1" in last and "error" in last, f"party {i} names party1: {last[:200]}")
    trained = [int(t) for t in re.findall(r"party\d: turn (\d+)", "".join(log(i) for i in range(N)))]
    check(trained and max(trained) < N * STEPS - 1, f"the kill came mid-run (last turn trained: {max(trained)})")
    held = {i: sorted(os.listdir(os.path.join(out, f"party{i}", "checkpoint"))) for i in range(N)}
    print(f"checkpoints after the kill: {held}")
    check(all(1 <= len(h) <= 2 for h in held.values()), "each party holds one or two checkpoints")

    code = wait_all(start("--resume"), 60)
    check(code == [0] * N, f"--resume on every party finishes the run ({code})")
    resumed_at = re.findall(r"training turns (\d+)\.\.", log(0))
    check(len(resumed_at) == 2 and int(resumed_at[1]) > 0 and int(resumed_at[1]) % (N * EVERY) == 0,
          f"the resumed run continued from a common checkpoint (turn {resumed_at[-1] if resumed_at else None})")

    for i in range(N):
        for part in ("backbone", "shard"):
            a = os.path.join(out, f"party{i}", "checkpoint", f"turn{N * STEPS}", part, "model.safetensors")
            b = os.path.join(ref, f"party{i}", "checkpoint", f"turn{N * STEPS}", part, "model.safetensors")
            check(filecmp.cmp(a, b, shallow=False), f"party {i}'s final {part} (weights and Adam moments) identical")
    key = lambda m: m["turn"]
    dep = sorted([m for i in range(N) for m in read_metrics(os.path.join(out, f"party{i}", "metrics.jsonl"))], key=key)
    unbroken = read_metrics(os.path.join(ref, "metrics.jsonl"))
    check([m["turn"] for m in dep] == list(range(N * STEPS)), "every turn once in the parties' metrics")
    check(dep == unbroken, "every turn's numbers as in the uninterrupted run")
    for i in range(N):
        a = json.load(open(os.path.join(out, f"party{i}", "report.json")))
        b = json.load(open(os.path.join(ref, f"party{i}", "report.json")))
        check(a["val_loss_own"] == b["val_loss_own"], f"party {i}: final validation loss {a['val_loss_own']:.6f} as uninterrupted")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)
finish()
