"""A deployed run stopped after some rounds (--until) and resumed from every party's checkpoint
(--resume) has exactly the per-turn losses of the simulation's unbroken run; resuming without
a checkpoint, or with a checkpoint of another config, is refused."""
import json
import os
import shutil
import tempfile

from common import check, deploy_config, finish, read_metrics, run, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-resume-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
cfg = deploy_config(data_dir, cache, 3, steps=4, join_timeout_s=30)
path = os.path.join(tmp, "cfg.json")
write_json(path, cfg)
out = os.path.join(tmp, "dep")

code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "sim"))
check(code == 0, "the simulation runs")
code, text, err = run("launch", "--config", path, "--out", out, "--until", "2")
check(code == 0, "launch --until 2 stops after two rounds")
check(len(read_metrics(os.path.join(out, "metrics.jsonl"))) == 6, "6 turns trained")
check(all(os.path.exists(os.path.join(out, f"party{p}", "checkpoint", "state.json")) for p in range(3)),
      "every party left a checkpoint")
code, text, err = run("launch", "--config", path, "--out", out, "--resume")
check(code == 0, "launch --resume finishes the run")
if code:
    print(err[-1500:])
    for p in range(3):
        print(open(os.path.join(out, f"party{p}.log")).read()[-800:])
key = lambda m: (m["round"], m["party"])
sim = [m for m in read_metrics(os.path.join(tmp, "sim", "metrics.jsonl")) if m["mode"] == "pc-moe"]
dep = read_metrics(os.path.join(out, "metrics.jsonl"))
check([key(m) for m in dep] == [key(m) for m in sim], f"the same {len(sim)} turns in the same order ({len(dep)})")
check(all(all(a[f] == b[f] for f in ("loss", "ce", "lr", "grad_norm")) for a, b in zip(dep, sim)),
      "stopped and resumed: every turn's numbers identical to the unbroken simulation's")
srep = json.load(open(os.path.join(tmp, "sim", "report.json")))["modes"]["pc-moe"]["parties"]
drep = json.load(open(os.path.join(out, "report.json")))["parties"]
check(all(drep[p]["report"]["val_loss_own"] == srep[p]["val_loss_own"] for p in range(3)), "and the same final validation losses")

code, text, err = run("launch", "--config", path, "--out", out, "--resume")
check(code != 0, "resuming a finished run is refused")
log = open(os.path.join(out, "party1.log")).read()
check("nothing to train" in log, "with a clear reason in the party's log")
fresh = os.path.join(tmp, "fresh")
code, text, err = run("party", "--config", path, "--party", "1", "--certs", os.path.join(out, "certs"), "--out", fresh, "--resume")
check(code != 0 and "no checkpoint" in err, "--resume without a checkpoint is refused")
other = json.loads(json.dumps(cfg))
other["train"]["lr"] = 0.02
write_json(os.path.join(tmp, "other.json"), other)
code, text, err = run("party", "--config", os.path.join(tmp, "other.json"), "--party", "1", "--certs", os.path.join(out, "certs"),
                      "--out", os.path.join(out, "party1"), "--resume")
check(code != 0 and "another model or train config" in err, "--resume with another config is refused")

shutil.rmtree(tmp)
finish()
