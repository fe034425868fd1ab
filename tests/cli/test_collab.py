"""`pcmoe collab` end to end on a tiny generated corpus with two parties (one category each):
every mode runs, the report has per-party validation losses on own and pooled data, memory by
category and traffic; PC-MoE's party memory is below the centralised model's; the same seed
gives the same numbers; bad collab configs are refused."""
import json
import math
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json, twice, without_timings

tmp = tempfile.mkdtemp(prefix="pcmoe-collab-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
# the tiny corpus has 6 documents per category: give validation 2 of them
cfg = tiny_config(data_dir, cache, steps=6, warmup=1, eval_windows=4)
cfg["data"]["val_fraction"] = 0.34
cfg["parties"] = {"mode": "genre", "n_parties": 2}
cfg["collab"] = {"modes": ["pc-moe", "centralised", "local-only"]}
path = os.path.join(tmp, "cfg.json")
write_json(path, cfg)


reports, out = twice(path, tmp, "")
print(out)
r = reports[0]
check(without_timings(reports[0]) == without_timings(reports[1]), "same seed and config: identical report")
check(set(r["modes"]) == {"pc-moe", "centralised", "local-only-full", "local-only-budget"}, "all modes ran")
check(len(r["per_party"]) == 2, "one row per party")
# Every model trained below the loss of a uniform guess over the vocabulary (an untrained
# model's, near ln V), and the centralised model's pooled loss is its own-data losses weighted by
# each party's validation windows (the pooled set is their union; batches differ, so 1e-5).
uniform = math.log(cfg["model"]["vocab_size"])
for row in r["per_party"]:
    for mode in ("pc-moe", "centralised", "local-only-full", "local-only-budget"):
        v = row[mode]
        check(0 < v["val_loss_own"] < uniform - 0.1 and 0 < v["val_loss_pooled"] < uniform - 0.1,
              f"party {row['party']} {mode}: trained losses {v['val_loss_own']:.3f}, {v['val_loss_pooled']:.3f} < ln V - 0.1")
weights = [row["val_windows"] for row in r["per_party"]]
mixed = sum(w * row["centralised"]["val_loss_own"] for w, row in zip(weights, r["per_party"])) / sum(weights)
pooled = r["per_party"][0]["centralised"]["val_loss_pooled"]
check(min(weights) > 0 and abs(mixed - pooled) <= 1e-5 * pooled,
      f"centralised pooled loss {pooled:.6f} = window-weighted own losses {mixed:.6f}")
# The learning curves end at the table's pooled loss (PC-MoE and local-only: the mean over the
# parties' models) and start from the same weights in every mode; eval_every 4 of 6 turns.
rows = r["per_party"]
ends = {"pc-moe": sum(x["pc-moe"]["val_loss_pooled"] for x in rows) / len(rows),
        "centralised": rows[0]["centralised"]["val_loss_pooled"],
        "local-only": sum(x["local-only-full"]["val_loss_pooled"] for x in rows) / len(rows)}
for mode, end in ends.items():
    c = r["curves"][mode]
    check([p["turns"] for p in c] == [0, 4, 6] and abs(c[-1]["val_loss_pooled"] - end) < 1e-12,
          f"{mode}: curve at 0, 4, 6 turns ends at the table's pooled loss {end:.4f}")
check(len({c[0]["val_loss_pooled"] for c in r["curves"].values()}) == 1, "every curve starts at the shared start's loss")
check(r["evaluation"]["windows"] > 0 and r["evaluation"]["cpu_seconds"] > 0, "the evaluation's cost is reported")
pc = r["modes"]["pc-moe"]
for p, party in enumerate(pc["parties"]):
    mem = party["memory"]
    check(mem["total"] == sum(mem[k] for k in ("parameters", "gradients", "optimizer", "activations", "scratch", "transport")),
          f"party {p}: memory total is the sum of its categories")
    check(party["bytes_sent_per_token"] > 0 and party["bytes_received_per_token"] > 0, f"party {p}: traffic counted")
check(0 < r["peak_memory_ratio"] < 1, f"peak_memory_ratio {r['peak_memory_ratio']:.3f} below 1")
kinds = {t["kind"] for t in pc["traffic"]}
check(kinds <= {"expert_forward", "expert_backward", "control"}, f"only allowed kinds cross: {sorted(kinds)}")
check(all(t["from"] != t["to"] for t in pc["traffic"]), "no self-traffic is counted")


def tensors(path):
    """name -> raw bytes of a safetensors file (stdlib only)."""
    blob = open(path, "rb").read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    return {k: blob[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}


# Each party's model is saved: its own backbone, the shared experts; eval and generate use it.
p0, p1 = (tensors(os.path.join(tmp, "a", f"party{p}", "checkpoint", "model.safetensors")) for p in (0, 1))
experts = [k for k in p0 if ".experts." in k]
check(len(experts) > 0 and all(p0[k] == p1[k] for k in experts), "both parties' saved models hold the same experts")
check(p0["wte"] != p1["wte"] and p0["layers.0.router"] != p1["layers.0.router"], "and their own backbones")
code, out_text, err = run("eval", "--checkpoint", os.path.join(tmp, "a", "party0", "checkpoint"))
check(code == 0 and "validation loss" in out_text, "a party's saved model evaluates")
code, out_text, err = run("generate", "--checkpoint", os.path.join(tmp, "a", "centralised", "checkpoint"), "--tokens", "5")
check(code == 0, "the centralised model is saved and generates")
metrics = read_metrics(os.path.join(tmp, "a", "metrics.jsonl"))
turns = [(m["round"], m["party"]) for m in metrics if m["mode"] == "pc-moe"]
check(len(turns) == 12 and all(sorted(p for rr, p in turns if rr == k) == [0, 1] for k in range(6)),
      "schedule recorded: each round every party exactly once")

# Starting from a checkpoint: PC-MoE and centralised begin from the trained weights, so their
# first-round losses are those of the checkpoint, far below the fresh model's.
single = tiny_config(data_dir, cache, steps=6, warmup=1, eval_windows=4)
write_json(os.path.join(tmp, "single.json"), single)
code, _, err = run("train", "--config", os.path.join(tmp, "single.json"), "--out", os.path.join(tmp, "pre"))
check(code == 0, "a checkpoint to start from")
warm = dict(cfg)
warm["collab"] = {"modes": ["pc-moe", "centralised", "local-only"], "init_from": os.path.join(tmp, "pre", "checkpoint")}
write_json(path, warm)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "w"))
check(code == 0, "collab from a checkpoint runs")
first = lambda d, mode: [m["ce"] for m in read_metrics(os.path.join(tmp, d, "metrics.jsonl")) if m["mode"] == mode][0]
check(first("w", "pc-moe") < first("a", "pc-moe") - 0.5, f"pc-moe starts from the checkpoint: {first('w', 'pc-moe'):.3f} vs {first('a', 'pc-moe'):.3f}")
check(first("w", "pc-moe") == first("w", "centralised"), "both modes start from the same weights (same first loss)")
budget = "local-only budget, party 0"
check(first("w", budget) < first("a", budget) - 0.5,
      f"the budget model starts from the checkpoint's backbone and own experts: {first('w', budget):.3f} vs {first('a', budget):.3f}")
warm["collab"]["init_from"] = os.path.join(tmp, "nowhere")
write_json(path, warm)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "w2"))
check(code != 0 and "no checkpoint" in err, "a missing init checkpoint is an error")

# Users' own data: one directory per party.
own = dict(cfg)
own["parties"] = {"mode": "paths", "n_parties": 2,
                  "paths": [os.path.join(data_dir, "one"), os.path.join(data_dir, "two")]}
own["collab"] = {"modes": ["pc-moe"]}
write_json(path, own)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "own"))
check(code == 0, "collab on one directory per party runs")
if code == 0:
    rp = json.load(open(os.path.join(tmp, "own", "report.json")))
    cats = [row["categories"] for row in rp["per_party"]]
    check(all(len(c) == 1 and c[0].startswith(f"party{i}/") for i, c in enumerate(cats)), f"each party holds its own directory: {cats}")
else:
    print(err[-1500:])

bad = dict(cfg)
bad["collab"] = {"modes": ["pc-moe", "fedsomething"]}
write_json(path, bad)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "c"))
check(code != 0 and "unknown mode 'fedsomething'" in err, "unknown mode refused")
bad = dict(cfg)
bad["parties"] = {"mode": "genre", "n_parties": 3}
write_json(path, bad)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "c"))
check(code != 0 and "error" in err, "more parties than categories refused: " + err.strip()[-120:])

shutil.rmtree(tmp)
finish()
