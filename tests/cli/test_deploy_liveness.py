"""A deployed run stops within a bounded time, naming the culprit, when a party dies (kill -9)
or hangs (SIGSTOP: only the coordinator's watchdog, deploy.dead_after_s, can tell)."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from common import PCMOE, check, deploy_config, finish, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-liveness-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)


def launch_and(signal_to_send, name, cfg):
    """Launches 4 parties, sends party 2 the signal once it has trained a turn; returns
    (seconds from the signal to the launcher's exit, launcher exit code, logs, report)."""
    path = os.path.join(tmp, name + ".json")
    write_json(path, cfg)
    out = os.path.join(tmp, name)
    proc = subprocess.Popen([PCMOE, "launch", "--config", path, "--out", out], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pids = {}
    while len(pids) < 4:
        line = proc.stderr.readline()
        m = re.search(r"party (\d) \(.*\) is pid (\d+)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
        if not line:
            break
    log2 = os.path.join(out, "party2.log")
    deadline = time.time() + 60
    while time.time() < deadline and not (os.path.exists(log2) and "party2: turn" in open(log2).read()):
        time.sleep(0.05)
    os.kill(pids[2], signal_to_send)
    t0 = time.time()
    if signal_to_send == signal.SIGSTOP:
        # the others must stop on their own; then the hung one is ours to end
        others_done = time.time() + 60
        while time.time() < others_done:
            logs = [open(os.path.join(out, f"party{p}.log")).read() for p in (0, 1, 3)]
            if all("error:" in l for l in logs):
                break
            time.sleep(0.05)
        elapsed = time.time() - t0
        os.kill(pids[2], signal.SIGKILL)
        proc.communicate(timeout=60)
    else:
        proc.communicate(timeout=60)
        elapsed = time.time() - t0
    logs = {p: open(os.path.join(out, f"party{p}.log")).read() for p in range(4)}
    report = json.load(open(os.path.join(out, "report.json")))
    return elapsed, proc.returncode, logs, report


# kill -9: the next call to the dead party fails at once; the caller stops the run.
cfg = deploy_config(data_dir, cache, 4, steps=400, dead_after_s=2, join_timeout_s=30)
elapsed, code, logs, report = launch_and(signal.SIGKILL, "kill", cfg)
check(code != 0, f"launch reports the failure (exit {code})")
codes = [p["exit_code"] for p in report["parties"]]
check(codes[2] == 137 and all(codes[p] not in (0, 137) for p in (0, 1, 3)), f"the others exit non-zero by themselves: {codes}")
check(elapsed < 2 + 5, f"all stopped {elapsed:.2f} s after the kill (dead_after_s 2)")
for p in (0, 1, 3):
    last = logs[p].strip().splitlines()[-1]
    check("party2" in last and "error" in last, f"party {p} names party2: {last[:160]}")

# SIGSTOP: party 2 is silent but its connections stay open; the watchdog presumes it dead.
cfg = deploy_config(data_dir, cache, 4, steps=400, dead_after_s=2, call_timeout_s=3, join_timeout_s=30)
elapsed, code, logs, report = launch_and(signal.SIGSTOP, "hang", cfg)
check(elapsed < 2 + 3 + 4, f"the others stopped {elapsed:.2f} s after party 2 hung (dead_after_s 2, call_timeout_s 3)")
named = [p for p in (0, 1, 3) if "party2" in logs[p].strip().splitlines()[-1]]
check(named == [0, 1, 3], f"every other party names party2 ({named})")
check(any("has not been heard from" in logs[p] for p in (0, 1, 3)), "the coordinator's watchdog found it")

shutil.rmtree(tmp)
finish()
