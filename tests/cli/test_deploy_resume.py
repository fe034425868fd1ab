"""A deployed run stopped after some rounds (--until) and resumed from every party's checkpoint
(--resume) has exactly the per-turn losses of the simulation's unbroken run; parties holding
checkpoints at two turns (one party lacks the newer) continue from the latest they all hold;
resuming without a checkpoint, with a checkpoint of another config or with no checkpoint in
common is refused."""
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
check(all(os.listdir(os.path.join(out, f"party{p}", "checkpoint")) == ["turn6"] and
          os.path.exists(os.path.join(out, f"party{p}", "checkpoint", "turn6", "state.json")) for p in range(3)),
      "every party left one checkpoint, at turn 6")
code, text, err = run("launch", "--config", path, "--out", out, "--until", "3")
check(code != 0 and "pass --resume" in open(os.path.join(out, "party0.log")).read(),
      "a fresh start over an earlier run's checkpoints is refused (they are not overwritten)")
every_round = json.loads(json.dumps(cfg))
every_round["deploy"]["checkpoint_every"] = 1  # the deploy section may change between sittings
write_json(os.path.join(tmp, "every-round.json"), every_round)
code, text, err = run("launch", "--config", os.path.join(tmp, "every-round.json"), "--out", out, "--resume")
check(code == 0, "launch --resume finishes the run, checkpointing every round now")
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

def launched(run_dir, *args):
    """`pcmoe launch` into run_dir; whether it succeeded (if not, the parties' logs say why)."""
    code = run("launch", "--config", path, "--out", run_dir, *args)[0]
    for p in range(3) if code else ():
        print(f"party {p}: " + open(os.path.join(run_dir, f"party{p}.log")).read()[-600:])
    return code == 0


def turns_of(run_dir):
    return [(m["round"], m["party"], m["loss"]) for m in read_metrics(os.path.join(run_dir, "metrics.jsonl"))]


# Checkpoints at turn 6 everywhere and at turn 12 on parties 0 and 1 only (party 2 died while
# saving it): the run continues from turn 6.
at12 = os.path.join(tmp, "at12")
check(launched(at12, "--until", "4"), "another run stopped at round 4")
mixed = os.path.join(tmp, "mixed")
check(launched(mixed, "--until", "2"), "and one stopped at round 2")
nothing = os.path.join(tmp, "nothing")  # parties 0 and 1 at turn 6, party 2 at turn 12 only
shutil.copytree(mixed, nothing)
shutil.rmtree(os.path.join(nothing, "party2", "checkpoint"))
shutil.copytree(os.path.join(at12, "party2", "checkpoint"), os.path.join(nothing, "party2", "checkpoint"))
for p in (0, 1):
    shutil.copytree(os.path.join(at12, f"party{p}", "checkpoint", "turn12"), os.path.join(mixed, f"party{p}", "checkpoint", "turn12"))
    shutil.copy(os.path.join(at12, f"party{p}", "metrics.jsonl"), os.path.join(mixed, f"party{p}", "metrics.jsonl"))
code, text, err = run("launch", "--config", path, "--out", mixed, "--resume")
check(code == 0 and "continues at turn 6 " in open(os.path.join(mixed, "party0.log")).read(),
      "parties at turns {6, 12}, {6, 12} and {6} continue from turn 6")
check(turns_of(mixed) == turns_of(out), "with every turn's numbers as the unbroken run's")
check(all(os.listdir(os.path.join(mixed, f"party{p}", "checkpoint")) == ["turn12"] for p in range(3)),
      "and each party keeps only its final checkpoint")
code, text, err = run("launch", "--config", path, "--out", nothing, "--resume")
check(code != 0 and "share no checkpoint" in open(os.path.join(nothing, "party1.log")).read(),
      "parties with no checkpoint turn in common are refused, with the reason")

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
check(code != 0 and "was made with another config" in err, "--resume with another config is refused")

shutil.rmtree(tmp)
finish()
