"""A deployment in which each party holds only its own data: 3 `pcmoe party` processes, each run in
a directory of its own that holds its documents (parties.paths lists relative paths, so no party
has a path to another's) and a copy of the shared tokenizer file, made by `pcmoe tokenizer` on
public text. They train exactly as `pcmoe collab` simulates the same config with every party's
data at hand. A tokenizer copy that differs, or no tokenizer file, is refused with nothing written."""
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile

from common import (PCMOE, check, finish, free_ports, read_metrics, run, tiny_config, tiny_corpus, wait_all,
                    write_json)

N = 3
tmp = tempfile.mkdtemp(prefix="pcmoe-own-data-")
public = os.path.join(tmp, "public")
tiny_corpus(public)


def party_text(root, p):
    """Party p's own documents: 6 files of sentences over a vocabulary no other party uses alike."""
    words = ["harbour", "copper", "meadow", "ember", "falcon", "willow", "cinder", "basalt", "orchid", "tundra"]
    os.makedirs(root)
    for d in range(6):
        lines = [" ".join(words[(p * 3 + d * 5 + s * (p + 2) + k * (2 * p + 1)) % len(words)] for k in range(7)) + "."
                 for s in range(50)]
        with open(os.path.join(root, f"doc{d}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def written(out):
    """What a party wrote into its output directory."""
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


cfg = tiny_config(public, ".cache", steps=3, warmup=1, eval_windows=4)
cfg["data"]["val_fraction"] = 0.34
cfg["data"]["tokenizer"] = "shared/tokenizer.model"
cfg["parties"] = {"mode": "paths", "n_parties": N, "paths": [f"own/p{p}" for p in range(N)]}
cfg["collab"] = {"modes": ["pc-moe"]}
cfg["deploy"] = {"parties": [{"name": f"party{i}", "address": f"127.0.0.1:{port}"} for i, port in enumerate(free_ports(N))],
                 "join_timeout_s": 30}
config = os.path.join(tmp, "cfg.json")
write_json(config, cfg)

# The shared tokenizer, from the public text of data.path (not from any party's documents).
tok_work = os.path.join(tmp, "tokenizer-work")
os.makedirs(tok_work)
shared = os.path.join(tmp, "tokenizer.model")
code, out, err = run("tokenizer", "--config", config, "--out", shared, cwd=tok_work)
check(code == 0 and os.path.getsize(shared) > 0 and sha(shared) in out,
      f"pcmoe tokenizer writes the shared tokenizer and prints its sha256: {out.strip()}")
before = sha(shared)
code, out, err = run("tokenizer", "--config", config, "--out", shared, cwd=tok_work)
check(code != 0 and err.count("\n") == 1 and "exists" in err and sha(shared) == before,
      f"an existing tokenizer file is not overwritten: {err.strip()}")

# Each party's root: its own documents and a copy of the tokenizer, nothing else. The simulation's
# root holds every party's documents.
roots = [os.path.join(tmp, f"root{p}") for p in range(N)]
sim_root = os.path.join(tmp, "sim-root")
for p, root in enumerate(roots):
    party_text(os.path.join(root, "own", f"p{p}"), p)
    os.makedirs(os.path.join(root, "shared"))
    shutil.copy(shared, os.path.join(root, "shared", "tokenizer.model"))
    shutil.copytree(os.path.join(root, "own", f"p{p}"), os.path.join(sim_root, "own", f"p{p}"))
os.makedirs(os.path.join(sim_root, "shared"))
shutil.copy(shared, os.path.join(sim_root, "shared", "tokenizer.model"))

code, out, err = run("collab", "--config", config, "--out", os.path.join(tmp, "sim"), cwd=sim_root)
check(code == 0, "the simulation trains the 3 parties' own directories with the shared tokenizer")
if code:
    print(err[-2000:])
    finish()
certs = os.path.join(tmp, "certs")
check(run("certs", "--config", config, "--out", certs)[0] == 0, "certificates for 3 parties")


def deploy(name, roots):
    """Runs party p of cfg.json in roots[p]; (exit codes, stderr texts, output directories)."""
    outs = [os.path.join(tmp, name, f"party{p}") for p in range(N)]
    logs = [open(os.path.join(tmp, f"{name}-{p}.log"), "w+") for p in range(N)]
    procs = [subprocess.Popen([PCMOE, "party", "--config", config, "--party", str(p), "--certs", certs, "--out", outs[p]],
                              cwd=roots[p], stdout=logs[p], stderr=subprocess.STDOUT) for p in range(N)]
    codes = wait_all(procs, 300)
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
    return codes, texts, outs


codes, logs, outs = deploy("dep", roots)
check(codes == [0] * N, f"3 parties, each in its own root, train together over mutual TLS (exit codes {codes})")
if any(codes):
    for text in logs:
        print(text[-1500:])
    finish()
sim = [m for m in read_metrics(os.path.join(tmp, "sim", "metrics.jsonl")) if m["mode"] == "pc-moe"]
srep = json.load(open(os.path.join(tmp, "sim", "report.json")))["modes"]["pc-moe"]["parties"]
for p in range(N):
    mine = read_metrics(os.path.join(outs[p], "metrics.jsonl"))
    simulated = [m for m in sim if m["party"] == p]
    check(len(mine) == 3 and [(m["round"], m["loss"], m["ce"], m["grad_norm"]) for m in mine] ==
          [(m["round"], m["loss"], m["ce"], m["grad_norm"]) for m in simulated],
          f"party {p}: its 3 turns' losses and gradient norms are the simulation's exactly")
    losses = [m["ce"] for m in mine]
    rep = json.load(open(os.path.join(outs[p], "report.json")))
    check(all(math.isfinite(x) for x in losses) and abs(losses[0] - math.log(384)) < 0.5 and losses[-1] < losses[0] and
          rep["val_loss_own"] < math.log(384),
          f"party {p}: cross-entropy {losses[0]:.3f} -> {losses[-1]:.3f} (ln 384 = {math.log(384):.3f}), "
          f"validation {rep['val_loss_own']:.3f}")
    check(rep["val_loss_own"] == srep[p]["val_loss_own"], f"party {p}: validation loss as simulated")
    tokens = [line for line in logs[p].splitlines() if " train tokens, " in line]
    check(len(tokens) == 1 and tokens[0].startswith(f"party {p}: "), f"party {p} encoded its own documents only: {tokens}")
    check(sorted(os.listdir(roots[p])) == [".cache", "own", "shared"] and os.listdir(os.path.join(roots[p], "own")) == [f"p{p}"],
          f"party {p}'s root holds its own data, the tokenizer and its cache, nothing of the others")
    check(not any(f.startswith("tok-") for f in os.listdir(os.path.join(roots[p], ".cache"))),
          f"party {p} trained no tokenizer of its own")

# A party whose tokenizer copy differs: refused at join, naming the tokenizer section and both
# files' hashes; no party writes metrics, a report or a checkpoint.
other_public = os.path.join(tmp, "public2")
shutil.copytree(public, other_public)
party_text(os.path.join(other_public, "extra"), 0)
other_cfg = json.loads(json.dumps(cfg))
other_cfg["data"]["path"] = other_public
write_json(os.path.join(tmp, "other.json"), other_cfg)
other = os.path.join(tmp, "other.model")
check(run("tokenizer", "--config", os.path.join(tmp, "other.json"), "--out", other, cwd=tok_work)[0] == 0 and
      sha(other) != sha(shared), "another tokenizer, of the same size, from other text")
shutil.copy(other, os.path.join(roots[1], "shared", "tokenizer.model"))
codes, logs, outs = deploy("bad-tok", roots)
needle = f"party1's config differs from the coordinator's in tokenizer (party1 {sha(other)[:12]}..., coordinator {sha(shared)[:12]}...)"
check(codes[1] != 0 and needle in logs[1], f"party 1's other tokenizer is refused at join, naming both hashes (exit {codes[1]})")
if needle not in logs[1]:
    print(logs[1][-1500:])
check(codes[0] != 0 and codes[2] != 0 and "party1 stopped the run" in logs[0], "parties 0 and 2 stop, naming party 1")
check(all(written(o) == [] for o in outs), f"nothing written by any party: {[written(o) for o in outs]}")
shutil.copy(shared, os.path.join(roots[1], "shared", "tokenizer.model"))

# Without a tokenizer file, a party holding only its own data cannot make the shared one.
no_tok = json.loads(json.dumps(cfg))
del no_tok["data"]["tokenizer"]
write_json(os.path.join(tmp, "no-tok.json"), no_tok)
out0 = os.path.join(tmp, "no-tok", "party0")
code, out, err = run("party", "--config", os.path.join(tmp, "no-tok.json"), "--party", "0", "--certs", certs, "--out", out0,
                     cwd=roots[0])
check(code != 0 and err.count("\n") == 1 and "set data.tokenizer" in err and written(out0) == [],
      f"a party with only its own data and no tokenizer file is refused, nothing written: {err.strip()}")

shutil.rmtree(tmp)
finish()
