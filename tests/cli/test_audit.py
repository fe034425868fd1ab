"""`pcmoe audit` end to end on a tiny generated corpus: a PC-MoE run with an "audit" section
leaves a recording; the audit scores every attack next to its chance level, and at the first
round (every backbone still the shared start) the attacker inverts the first MoE layer's hidden
states almost perfectly and rebuilds a secret planted in the victim's text; a run without a
recording, a recording from another config and a bad audit section are refused with a clear
error."""
import json
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json

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

# A secret planted in the victim's documents only (the observer's public text never holds it) is
# reported rebuilt whole by the state attack at round 0, where the attacker's view is the shared
# start: the victim's exact weights. The public bigram guess gets none of it; a string that
# occurs nowhere is not reported; the side-by-side sample shows the victim's text, flagged.
secret_dir = os.path.join(tmp, "secret_corpus")
tiny_corpus(secret_dir)
for d in range(6):  # category "two": party 1's
    path = os.path.join(secret_dir, "two", f"doc{d}.txt")
    lines = open(path).read().splitlines()
    for i in range(3, len(lines), 4):
        lines[i] += " Call Zorblax Quintavius at 555-0199."
    open(path, "w").write("\n".join(lines) + "\n")
planted = config()
planted["data"]["path"] = secret_dir
collab("planted", planted)
secrets_file = os.path.join(tmp, "secrets.txt")
open(secrets_file, "w").write("Zorblax Quintavius\nNobody Here\n")
code, out, err = run("audit", "--run", os.path.join(tmp, "planted"), "--out", os.path.join(tmp, "audit_secrets"),
                     "--public-windows", "16", "--secrets", secrets_file, "--secrets-regex", "555-[0-9]{4}")
check(code == 0 and "the victims' secrets" in out, "audit with --secrets completes and prints the secrets table")
if code:
    print(err[-3000:])
    finish()
s = json.load(open(os.path.join(tmp, "audit_secrets", "audit.json")))["secrets"]
check(s["patterns"] == 3 and s["found"] == 2 and "Nobody Here" not in [x["secret"] for x in s["per_secret"]],
      f"the planted name and the number pattern are found, the absent name is not: {s['found']} of {s['patterns']}")
results = next(x for x in s["per_secret"] if x["secret"] == "Zorblax Quintavius")["results"]
first = [r for r in results if r["round"] == 0 and r["signal"] == "states"]
best = max(first, key=lambda r: r["exact"])
check(best["occurrences"] > 0 and best["exact"] >= 1 and best["mean_fraction"] > 0.9 and
      best["best_guess"] == best["truth_tokens"],
      f"round 0: {best['attack']} rebuilds the planted name whole in {best['exact']} of {best['occurrences']} "
      f"occurrences ({best['best_guess']!r})")
check(all(r["exact"] == 0 for r in results if r["attack"] == "public bigram"),
      "the public bigram guess rebuilds none of the planted name")
sample = open(os.path.join(tmp, "audit_secrets", "sample_party1.txt")).read()
check(sample.startswith("SENSITIVE") and "Zorblax Quintavius" in sample and "attacker:" in sample,
      "the side-by-side sample shows the victim's text next to the attacker's, flagged sensitive")
code, out, err = run("audit", "--run", os.path.join(tmp, "planted"), "--out", os.path.join(tmp, "audit_x"),
                     "--secrets-regex", "([a-z")
check(code == 2 and "not a valid pattern" in err, f"a bad pattern is a usage error: {err.strip()[:80]}")

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

# A DP-SGD run: its batches are secret Poisson draws, so membership inference takes the members
# from the run's record of them (party*/dp_batches.json: each round's units, the logged count;
# a sequence unit is one window) and scores the victim's trained windows, not the schedule's.
dp = config()
dp["collab"] = {"modes": ["pc-moe", "centralised"]}
dp["privacy"] = {"epsilon": 8.0, "sampling_rate": 0.3}
collab("dp", dp)
logged = {(x["party"], x["round"]): x["units"] for x in read_metrics(os.path.join(tmp, "dp", "metrics.jsonl"))
          if x["mode"] == "pc-moe"}
batches = [json.load(open(os.path.join(tmp, "dp", f"party{p}", "dp_batches.json"))) for p in range(2)]
rounds = len(logged) // 2
check(rounds > 0 and all(len(b["rounds"]) == rounds and b["unit"] == "sequence" and
                         all(len(r) == logged[(p, i)] and r == sorted(set(r)) and 0 <= min(r + [0]) and
                             max(r + [0]) < b["n_units"] for i, r in enumerate(b["rounds"]))
                         for p, b in enumerate(batches)),
      f"each party's record holds its {rounds} rounds' units, as many as its log counts")
code, out, err = run("audit", "--run", os.path.join(tmp, "dp"), "--out", os.path.join(tmp, "audit_dp"),
                     "--public-windows", "16")
check(code == 0, "audit of a DP-SGD run completes")
cells = json.load(open(os.path.join(tmp, "audit_dp", "audit.json")))["membership"] if code == 0 else []
trained = min(256, sum(len(r) for r in batches[1]["rounds"]))
check({m["model"] for m in cells} == {"pc-moe, the victim's model", "pc-moe, the observer's model", "centralised"} and
      all(m["members"] == trained and m["members_from"] == "the run's recorded Poisson batches" and
          m["trained_steps"] == rounds and on_grid(m["auc_loss"], m) for m in cells),
      f"DP run: every model scored on the victim's {trained} sampled windows")
bad = batches[1]
bad["rounds"][0] = [bad["n_units"]]
write_json(os.path.join(tmp, "dp", "party1", "dp_batches.json"), bad)
code, out, err = run("audit", "--run", os.path.join(tmp, "dp"), "--out", os.path.join(tmp, "audit_dp2"),
                     "--public-windows", "16")
check(code == 1 and "dp_batches.json: a round's units must be ascending, in [0, n_units)" in err,
      f"a record naming a unit the party does not have is refused: {err.strip()[-120:]}")
os.remove(os.path.join(tmp, "dp", "party1", "dp_batches.json"))
code, out, err = run("audit", "--run", os.path.join(tmp, "dp"), "--out", os.path.join(tmp, "audit_dp3"),
                     "--public-windows", "16")
check(code == 1 and "dp_batches.json: missing" in err, f"a DP run without its record is refused: {err.strip()[-120:]}")

# Weights mode: the host receives its experts' gradient sums and no hidden state or output
# gradient; the audit reads each victim's turn as a bag of words off them (truth: the turn's
# batch, or under DP-SGD its recorded Poisson units) and prints no activation table.
for name, extra in (("weights", {}), ("weights_dp", {"privacy": {"epsilon": 8.0, "sampling_rate": 0.3}})):
    wcfg = config(**extra)
    wcfg["collab"] = {"modes": ["pc-moe"], "exchange": "weights"}
    collab(name, wcfg)
    code, out, err = run("audit", "--run", os.path.join(tmp, name), "--out", os.path.join(tmp, "audit_" + name),
                         "--public-windows", "16")
    check(code == 0, f"audit of a {name} run completes")
    if code:
        print(err[-3000:])
        continue
    a = json.load(open(os.path.join(tmp, "audit_" + name, "audit.json")))
    wcells = a["weights_bag_of_words"]
    check(a["exchange"] == "weights" and a["cells"] == [] and a["links"] == [] and
          "not sent in weights mode" in out and "top-1" not in out,
          f"{name}: no activation attack is reported, the table says so")
    check(sorted((c["round"], c["party"]) for c in wcells) == [(0, 1), (3, 1), (5, 1)] and
          all(0 <= c["precision"] <= 1 and 0 < c["actual"] <= 384 and c["predicted"] > 0 and
              abs(c["chance_precision"] - c["actual"] / 384) < 1e-12 for c in wcells),
          f"{name}: the victim's turn of every recorded round is scored next to chance")
    check(any(m["model"] == "pc-moe, the victim's model" for m in a["membership"]),
          f"{name}: membership inference attacks the released model")
    if name == "weights":
        r0 = [c for c in wcells if c["round"] == 0][0]
        check(r0["precision"] > r0["chance_precision"],
              f"round 0 (the shared start), exact sums: precision {r0['precision']:.3f} above chance "
              f"{r0['chance_precision']:.3f}")

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
