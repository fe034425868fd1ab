"""Determinism and exact resume: the same seed and config give bit-identical metrics, and a run
stopped at step 5 and resumed continues the exact loss curve of an unbroken run."""
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-resume-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
cfg = os.path.join(tmp, "cfg.json")
write_json(cfg, tiny_config(data_dir, cache, steps=12, grad_accum=2))


def metrics(name):
    # tok/s is a timing, not a result
    return [{k: v for k, v in m.items() if k != "tok_per_s"} for m in read_metrics(os.path.join(tmp, name, "metrics.jsonl"))]


for name in ("a", "b"):
    code, _, err = run("train", "--config", cfg, "--out", os.path.join(tmp, name))
    check(code == 0, f"unbroken run {name} trains")
    if code:
        print(err)
check(metrics("a") == metrics("b") and len(metrics("a")) > 12, "same seed and config: identical metrics, bit for bit")

code, _, err = run("train", "--config", cfg, "--out", os.path.join(tmp, "c"), "--until", "5")
check(code == 0 and len(metrics("c")) >= 5, "a run stopped after step 5 leaves a checkpoint")
code, _, err = run("train", "--config", cfg, "--out", os.path.join(tmp, "c"), "--resume")
check(code == 0 and "resuming from" in err, "resumed run continues")
check(metrics("c") == metrics("a"), "stopped + resumed run has the exact metrics of the unbroken run")
wa = open(os.path.join(tmp, "a", "checkpoint", "model.safetensors"), "rb").read()
wc = open(os.path.join(tmp, "c", "checkpoint", "model.safetensors"), "rb").read()
check(wa == wc, "final checkpoints are byte-identical")

shutil.rmtree(tmp)
finish()
