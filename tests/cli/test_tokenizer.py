"""`pcmoe tokenizer` and data.tokenizer: the file it writes is the tokenizer `train` and `collab`
would train on the same config, so a run given it as data.tokenizer trains exactly as one without;
a tokenizer of the wrong size, a missing file or one beside collab.init_from is refused with one
clear line and nothing written."""
import json
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-tokenizer-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
cfg = tiny_config(data_dir, cache, steps=6)
plain = os.path.join(tmp, "plain.json")
write_json(plain, cfg)

tok = os.path.join(tmp, "shared", "tokenizer.model")
code, out, err = run("tokenizer", "--config", plain, "--out", tok)
check(code == 0 and os.path.getsize(tok) > 1000, f"pcmoe tokenizer writes {tok}: {out.strip()}")
code, out, err = run("tokenizer", "--config", plain)
check(code == 2 and "missing --out" in err, "pcmoe tokenizer needs --out")

with_tok = json.loads(json.dumps(cfg))
with_tok["data"]["tokenizer"] = tok
given = os.path.join(tmp, "given.json")
write_json(given, with_tok)


def losses(metrics, mode=None):
    return [(m.get("round", m.get("step")), m.get("party"), m["loss"]) for m in read_metrics(metrics)
            if "loss" in m and (mode is None or m["mode"] == mode)]


# train: the same numbers with the tokenizer file as without it, and the checkpoint keeps its bytes.
for name, path in (("train-plain", plain), ("train-given", given)):
    code, out, err = run("train", "--config", path, "--out", os.path.join(tmp, name))
    check(code == 0, f"train ({name}) completes")
a, b = (losses(os.path.join(tmp, n, "metrics.jsonl")) for n in ("train-plain", "train-given"))
check(len(a) == 6 and a == b, f"train: every step's loss is the same with data.tokenizer ({a[-1][2]:.4f})")
check(open(os.path.join(tmp, "train-given", "checkpoint", "tokenizer.model"), "rb").read() == open(tok, "rb").read(),
      "the checkpoint carries the shared tokenizer's bytes")

# collab (2 parties, one category each): the union of their training documents is the split's
# training side, so the tokenizer file is the one collab trains.
for c in (cfg, with_tok):
    c["parties"] = {"mode": "genre", "n_parties": 2}
    c["collab"] = {"modes": ["pc-moe"]}
    c["train"]["steps"] = 3
write_json(plain, cfg)
write_json(given, with_tok)
for name, path in (("collab-plain", plain), ("collab-given", given)):
    code, out, err = run("collab", "--config", path, "--out", os.path.join(tmp, name))
    check(code == 0, f"collab ({name}) completes")
a, b = (losses(os.path.join(tmp, n, "metrics.jsonl"), "pc-moe") for n in ("collab-plain", "collab-given"))
check(len(a) == 6 and a == b, "collab: every pc-moe turn's loss is the same with data.tokenizer")

# Refusals: one line each, nothing written.
bad_cases = (
    ("a tokenizer of another size", {"model": {"vocab_size": 320}}, "tokenizer has 384 pieces but model.vocab_size is 320"),
    ("a missing tokenizer file", {"data": {"tokenizer": os.path.join(tmp, "nowhere.model")}}, "tokenizer model not found at"),
    ("data.tokenizer beside collab.init_from", {"collab": {"init_from": os.path.join(tmp, "train-plain")}},
     "'collab.init_from' and 'data.tokenizer' both name a tokenizer"),
)
for what, patch, needle in bad_cases:
    bad = json.loads(json.dumps(with_tok))
    for section, values in patch.items():
        bad.setdefault(section, {}).update(values)
    write_json(os.path.join(tmp, "bad.json"), bad)
    out_dir = os.path.join(tmp, "bad-out")
    for cmd in ("train", "collab"):
        code, out, err = run(cmd, "--config", os.path.join(tmp, "bad.json"), "--out", out_dir)
        left = os.listdir(out_dir) if os.path.isdir(out_dir) else []
        check(code == 1 and err.count("\n") == 1 and needle in err and left == [],
              f"{cmd}: {what} is refused, nothing written: {err.strip()[-150:]}")
        shutil.rmtree(out_dir, ignore_errors=True)

shutil.rmtree(tmp)
finish()
