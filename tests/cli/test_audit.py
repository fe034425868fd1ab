"""`pcmoe audit` end to end on a tiny generated corpus: a PC-MoE run with an "audit" section
leaves a recording; the audit scores every attack next to its chance level, and at the first
round (every backbone still the shared start) the attacker inverts the first MoE layer's hidden
states almost perfectly; a run without a recording, a recording from another config and a bad
audit section are refused with a clear error."""
import json
import os
import shutil
import tempfile

from common import check, finish, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-audit-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)


def config(seed=7, audit=True, **extra):
    cfg = tiny_config(data_dir, cache, steps=6, warmup=1, eval_windows=4, seed=seed)
    cfg["data"]["val_fraction"] = 0.34
    cfg["parties"] = {"mode": "genre", "n_parties": 2}
    cfg["collab"] = {"modes": ["pc-moe"]}
    if audit:
        cfg["audit"] = {"observer": 0, "record_every": 3}
    cfg.update(extra)
    return cfg


def collab(name, cfg):
    path = os.path.join(tmp, name + ".json")
    write_json(path, cfg)
    code, out, err = run("collab", "--config", path, "--out", os.path.join(tmp, name))
    check(code == 0, f"collab {name} completes")
    if code:
        print(err[-3000:])
        finish()
    return json.load(open(os.path.join(tmp, name, "report.json")))


report = collab("run", config())
rec = report["modes"]["pc-moe"]["audit_recording"]
check(rec["records"] > 0 and rec["bytes"] > 0, f"the observer recorded {rec['records']} payloads, {rec['bytes']} bytes")
views = sorted(os.listdir(os.path.join(tmp, "run", "audit")))
check(views == ["recording.bin", "truth.bin", "view_r0", "view_r3", "view_r5"], f"recorded rounds 0, 3 and the last: {views}")

code, out, err = run("audit", "--run", os.path.join(tmp, "run"), "--out", os.path.join(tmp, "audit"), "--public-windows", "16")
check(code == 0, "audit completes")
if code:
    print(err[-3000:])
    finish()
print(out)
a = json.load(open(os.path.join(tmp, "audit", "audit.json")))
cells = a["cells"]
check({c["attack"] for c in cells} == {"nearest-embedding", "linear-probe", "mlp", "routing", "routing-trace"},
      "every attack ran")
check({c["signal"] for c in cells} == {"states", "gradients", "expert ids", "expert ids across layers"},
      "states, gradients and expert ids (one layer and across layers) are attacked")
links = a["links"]
check(len(links) == 3 and all(0 <= l["baseline"] <= 1 and 0 <= l["accuracy"] <= 1 and l["layer"] == l["from_layer"] + 1
                              for l in links), f"the host's linking of layer 0 to 1 is scored at each round: {links}")
check(all(0 <= c["top1"] <= c["top10"] <= 1 and 0 < c["chance_top1"] <= c["chance_top10"] <= 1 for c in cells),
      "rates and chance levels are probabilities, top-1 <= top-10")
first = [c for c in cells if c["round"] == 0 and c["layer"] == 0 and c["signal"] == "states"]
best = max(first, key=lambda c: c["top1"])
check(best["top1"] > 0.9 and best["top1"] > best["chance_top1"] + 0.3,
      f"round 0, layer 0: the shared start lets {best['attack']} recover {best['top1']:.3f} of the victim's tokens "
      f"(chance {best['chance_top1']:.3f})")
# An AUC over m members and n non-members is a count of ordered pairs (ties counting half) over
# m*n: a value off that grid is not an AUC of these windows.
on_grid = lambda auc, m: abs(2 * auc * m["members"] * m["nonmembers"] - round(2 * auc * m["members"] * m["nonmembers"])) < 1e-6
check(len(a["membership"]) > 0 and all(m["members"] > 0 and m["nonmembers"] > 0 and on_grid(m["auc_loss"], m) and
                                       on_grid(m["auc_calibrated"], m) for m in a["membership"]),
      "membership inference scored: each AUC is a pair count over members x non-members")
check(len({(m["auc_loss"], m["auc_calibrated"]) for m in a["membership"]}) > 1, "the models' AUCs differ")

# The federated modes' released models join the membership table from a run of their own.
fed = config(audit=False)
fed["collab"] = {"modes": ["local-only", "fedavg", "fedavg-lora"]}
collab("fed", fed)
code, out, err = run("audit", "--run", os.path.join(tmp, "run"), "--fed-run", os.path.join(tmp, "fed"),
                     "--out", os.path.join(tmp, "audit_fed"), "--public-windows", "16")
check(code == 0, "audit with a federated run completes")
a = json.load(open(os.path.join(tmp, "audit_fed", "audit.json"))) if code == 0 else {"membership": []}
fed_cells = [m for m in a["membership"] if m["run"].endswith("fed")]
fed_models = {m["model"] for m in fed_cells}
check(fed_models == {"fedavg", "fedavg-lora", "local-only, the victim's model"} and
      all(m["reference"] == "the observer's local-only model" for m in fed_cells),
      f"the federated run's models are attacked, calibrated by its own local-only model: {sorted(fed_models)}")

# refusals
report_plain = collab("plain", config(audit=False))
code, out, err = run("audit", "--run", os.path.join(tmp, "plain"), "--out", os.path.join(tmp, "audit2"))
check(code == 1 and "no recording" in err, f"a run without a recording is refused: {err.strip()}")
shutil.copytree(os.path.join(tmp, "run", "audit"), os.path.join(tmp, "plain", "audit"))
other = collab("other", config(seed=8))
shutil.copy(os.path.join(tmp, "other", "audit", "recording.bin"), os.path.join(tmp, "plain", "audit", "recording.bin"))
code, out, err = run("audit", "--run", os.path.join(tmp, "plain"), "--out", os.path.join(tmp, "audit3"))
check(code == 1 and "another config" in err, f"a recording of another config is refused: {err.strip()}")
bad = os.path.join(tmp, "bad.json")
for audit, what in (({"observer": 2}, "observer"), ({"record_every": -1}, "record_every"), ({"observers": 1}, "observers")):
    cfg = config()
    cfg["audit"] = audit
    write_json(bad, cfg)
    code, out, err = run("collab", "--config", bad, "--out", os.path.join(tmp, "bad"))
    check(code == 1 and what in err, f"audit section {audit} refused: {err.strip()}")
cfg = config()
cfg["collab"]["state_noise"] = -0.5
write_json(bad, cfg)
code, out, err = run("collab", "--config", bad, "--out", os.path.join(tmp, "bad"))
check(code == 1 and "state_noise" in err, f"a negative state_noise is refused: {err.strip()}")
code, out, err = run("audit", "--run", os.path.join(tmp, "run"))
check(code == 2 and "missing --out" in err, "audit without --out is a usage error")
shutil.rmtree(tmp)
finish()
