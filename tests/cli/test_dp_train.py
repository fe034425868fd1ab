"""DP-SGD from the command line: `pcmoe train` and `pcmoe collab` with a privacy section.
Refuses budgets it cannot meet, a delta >= 1/N and malformed privacy settings, writing nothing;
stops at the budget with a checkpoint; logs epsilon at every logged step (never above the
budget); with privacy.test_seed batches and noise repeat bit for bit and the log and report say
"not private", without it two runs draw other batches (and collab's modes still share theirs);
the report carries the privacy block."""
import json
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-dp-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)


def config(name, privacy, **train):
    cfg = tiny_config(data_dir, cache, eval_every=0, **train)
    cfg["privacy"] = privacy
    path = os.path.join(tmp, name + ".json")
    write_json(path, cfg)
    return path


def weights(out):
    with open(os.path.join(out, "checkpoint", "model.safetensors"), "rb") as f:
        return f.read()


# Refused before any step: a budget one step already exceeds, an unreachable target, bad keys.
for name, privacy, want in [
    ("one-step", {"epsilon": 0.5, "noise_multiplier": 0.3, "sampling_rate": 1.0}, "privacy budget cannot be met"),
    ("delta", {"epsilon": 1.0, "sampling_rate": 0.1, "delta": 1.5}, "delta must be in (0, 1)"),
    ("delta0", {"epsilon": 1.0, "sampling_rate": 0.1, "delta": 0}, "delta must be in (0, 1)"),
    ("eps0", {"epsilon": 0, "sampling_rate": 0.1, "noise_multiplier": 1.0}, "epsilon must be > 0"),
    ("epsneg", {"epsilon": -2, "sampling_rate": 0.1}, "epsilon must be > 0"),
    ("clip", {"epsilon": 1.0, "sampling_rate": 0.1, "clip": 0}, "clip must be > 0"),
    ("rate0", {"epsilon": 1.0, "sampling_rate": 0}, "sampling_rate must be in (0, 1]"),
    ("fixed", {"epsilon": 1.0, "sampling_rate": 0.1, "sampling": "fixed"}, "sampling must be \"poisson\""),
    ("rate", {"epsilon": 1.0, "sampling_rate": 1.5}, "sampling_rate must be in (0, 1]"),
    ("unit", {"epsilon": 1.0, "sampling_rate": 0.1, "unit": "paragraph"}, "unit must be"),
    ("key", {"epsilon": 1.0, "sampling_rate": 0.1, "clipnorm": 1.0}, "unknown config key 'privacy.clipnorm'"),
    ("none", {"sampling_rate": 0.1}, "set epsilon"),
    ("weak-delta", {"epsilon": 1.0, "sampling_rate": 0.1, "delta": 0.5}, "set privacy.allow_weak_delta: true"),
    ("noise-seed", {"epsilon": 1.0, "sampling_rate": 0.1, "noise_seed": 3}, "is now 'privacy.test_seed'"),
]:
    out = os.path.join(tmp, "refused-" + name)
    code, _, err = run("train", "--config", config(name, privacy), "--out", out)
    check(code != 0 and want in err and not os.path.exists(out),
          f"refused ({name}): non-zero exit, says '{want}', nothing written")

out = os.path.join(tmp, "refused-accum")
code, _, err = run("train", "--config", config("accum", {"epsilon": 1.0, "sampling_rate": 0.1}, grad_accum=2), "--out", out)
check(code != 0 and "grad_accum must be 1" in err, "refused: accumulated fixed batches with DP (not Poisson)")

# A given noise multiplier with a budget: the run stops at the last step the budget pays for.
budget = {"epsilon": 4.0, "noise_multiplier": 1.5, "sampling_rate": 0.5, "clip": 0.5, "test_seed": 3}
out = os.path.join(tmp, "budget")
code, _, err = run("train", "--config", config("budget", budget, steps=40), "--out", out)
report = json.load(open(os.path.join(out, "report.json"))) if code == 0 else {}
stopped = report.get("stopped_at_step", 0)
check(code == 0 and 1 < stopped < 40 and "allows" in err and os.path.exists(os.path.join(out, "checkpoint")),
      f"stops at the budget with a checkpoint and a message (after {stopped} of 40 steps)")
check("not private: seeded sampling and noise" in err, "a seeded run's log says it is not private")
m = [x for x in read_metrics(os.path.join(out, "metrics.jsonl")) if "epsilon" in x] if code == 0 else []
eps = [x["epsilon"] for x in m]
check(len(m) == stopped and eps == sorted(eps) and eps[-1] <= 4.0,
      "epsilon logged at every step, increasing, within the budget")
p = report.get("privacy", {})
check(p.get("steps") == stopped and p.get("epsilon", {}).get("rdp_improved", 9) <= 4.0
      and p["epsilon"]["rdp_classic"] > p["epsilon"]["rdp_improved"] and p.get("unit") == "sequence"
      and p.get("noise_multiplier") == 1.5 and p.get("randomness", {}).get("private") is False
      and p["randomness"]["source"].startswith("not private: seeded sampling and noise")
      and p["randomness"]["test_seed"] == 3 and p.get("delta") == 1 / (10 * p.get("units", 0)),
      "report.json privacy block: steps, both epsilons, unit, sigma, delta 1/(10N), 'not private: seeded'")

# Calibrated sigma, document units, per-layer clipping: seeded runs repeat, secure ones do not.
calib = {"epsilon": 3.0, "sampling_rate": 0.5, "clip": 0.5, "unit": "document", "clipping": "per-layer",
         "test_seed": 11}
for name in ("s1", "s2"):
    code, _, err = run("train", "--config", config("calib", calib, steps=6), "--out", os.path.join(tmp, name))
    check(code == 0 and "(calibrated)" in err, f"calibrated run {name} trains")
check(weights(os.path.join(tmp, "s1")) == weights(os.path.join(tmp, "s2")), "seeded noise: identical weights")
secure = dict(calib, unit="sequence")  # ~100 units: two secret draws of a batch never coincide
del secure["test_seed"]
for name in ("r1", "r2"):
    code, _, err = run("train", "--config", config("secure", secure, steps=3), "--out", os.path.join(tmp, name))
    check(code == 0 and "not private" not in err, f"secure run {name} trains, its log not saying 'not private'")
check(weights(os.path.join(tmp, "r1")) != weights(os.path.join(tmp, "r2")), "secure noise: runs differ")


def first_loss(name):  # step 1's loss: the same initial model, so it differs only by the batch
    return read_metrics(os.path.join(tmp, name, "metrics.jsonl"))[0]["loss"]


check(first_loss("s1") == first_loss("s2"), "test_seed: the runs draw the same first batch")
check(first_loss("r1") != first_loss("r2"), f"secure: two runs draw other first batches ({first_loss('r1')}, "
      f"{first_loss('r2')})")
r = json.load(open(os.path.join(tmp, "r1", "report.json")))["privacy"]
check(r["randomness"]["private"] is True and "test_seed" not in r["randomness"] and not r["weak_delta"],
      "secure report: private, no test seed, delta below 1/N")
weak = dict(secure, delta=0.5, allow_weak_delta=True)
code, _, err = run("train", "--config", config("weak", weak, steps=1, warmup=0), "--out", os.path.join(tmp, "weak"))
r = json.load(open(os.path.join(tmp, "weak", "report.json")))["privacy"] if code == 0 else {}
check(r.get("delta") == 0.5 and r.get("weak_delta") is True, "privacy.allow_weak_delta: delta 0.5 runs, reported weak")
r = json.load(open(os.path.join(tmp, "s1", "report.json")))
check(r["privacy"]["noise_multiplier_calibrated"] and r["privacy"]["epsilon"]["rdp_improved"] <= 3.0
      and r["privacy"]["epsilon"]["rdp_improved"] > 2.9 and r["privacy"]["clipping"] == "per-layer",
      f"calibrated sigma spends the budget: epsilon {r['privacy']['epsilon']['rdp_improved']:.3f} of 3.0")

# pcmoe collab with privacy: every party its own budget, PC-MoE and centralised side by side.
cfg = tiny_config(data_dir, cache, steps=3, eval_every=0)
cfg["parties"] = {"n_parties": 2, "mode": "iid"}
cfg["collab"] = {"modes": ["pc-moe", "centralised"]}
cfg["privacy"] = {"epsilon": 5.0, "sampling_rate": 0.3, "test_seed": 1}
path = os.path.join(tmp, "collab.json")
write_json(path, cfg)
out = os.path.join(tmp, "collab")
code, so, err = run("collab", "--config", path, "--out", out)
r = json.load(open(os.path.join(out, "report.json"))) if code == 0 else {}
check(code == 0 and len(r.get("privacy", [])) == 2 and all(p["epsilon"]["rdp_improved"] <= 5.0 for p in r["privacy"])
      and "DP-SGD" in so and all(not p["randomness"]["private"] for p in r["privacy"])
      and err.count("not private: seeded sampling and noise") == 2,
      "collab: a privacy block per party, each within its budget, each saying 'not private: seeded'")
kinds = {t["kind"] for t in r.get("modes", {}).get("pc-moe", {}).get("traffic", [])}
check(kinds == {"expert_forward", "expert_backward_units", "control"},
      f"collab: DP turns carry per-unit backward calls, no plain backward ({sorted(kinds)})")

# Secure batches in collab: the modes still train each turn on the same batch (the first turn's
# loss, from the same initial model, agrees), and a refused delta writes nothing.
cfg["privacy"] = {"epsilon": 5.0, "sampling_rate": 0.3}
cfg["train"].update(steps=1, warmup=0)
write_json(path, cfg)
out = os.path.join(tmp, "collab-secure")
code, _, err = run("collab", "--config", path, "--out", out)
m = read_metrics(os.path.join(out, "metrics.jsonl")) if code == 0 else []
first = {mode: next(x["loss"] for x in m if x["mode"] == mode) for mode in ("pc-moe", "centralised")} if m else {}
check(code == 0 and "not private" not in err and abs(first["pc-moe"] - first["centralised"]) < 1e-4,
      f"collab, secure batches: pc-moe and centralised train the same first batch ({first})")
cfg["privacy"]["delta"] = 0.5
write_json(path, cfg)
out = os.path.join(tmp, "collab-weak")
code, _, err = run("collab", "--config", path, "--out", out)
check(code != 0 and "privacy.allow_weak_delta" in err and not os.path.exists(out), "collab: delta >= 1/N refused, nothing written")

shutil.rmtree(tmp)
finish()
