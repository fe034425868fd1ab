"""Non-finite numbers are never loaded and never a result. A checkpoint with one NaN or one +inf,
in a weight or in AdamW's state, is refused by eval, generate, train --resume and
collab.init_from: one error line naming the tensor, a non-zero exit, the checkpoint's files
unchanged. A model whose outputs overflow is an error in eval, and a run that diverges stops with
an error instead of writing non-finite weights over its last checkpoint."""
import hashlib
import json
import os
import shutil
import struct
import tempfile

from common import check, finish, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-nonfinite-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
cfg = tiny_config(data_dir, cache, steps=3, warmup=1, eval_every=0)
cfg_path = os.path.join(tmp, "cfg.json")
write_json(cfg_path, cfg)
good_run = os.path.join(tmp, "good")
code, _, err = run("train", "--config", cfg_path, "--out", good_run)
check(code == 0, "a good tiny run trains")
if code:
    print(err[-2000:])
    finish()


def tensor_offsets(path):
    """{name: (first byte of its data in the file, numel)} of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return {k: (8 + n + v["data_offsets"][0], (v["data_offsets"][1] - v["data_offsets"][0]) // 4)
            for k, v in header.items() if k != "__metadata__"}


def digests(directory):
    """Every file under directory and the SHA-256 of its bytes."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def run_with(tensor, value, element=3):
    """A copy of the good run whose checkpoint holds `value` at `element` of `tensor`."""
    name = f"{tensor}-{value}".replace("/", "_")
    copy = os.path.join(tmp, name)
    shutil.copytree(good_run, copy)
    weights = os.path.join(copy, "checkpoint", "model.safetensors")
    start, numel = tensor_offsets(weights)[tensor]
    assert element < numel
    with open(weights, "r+b") as f:
        f.seek(start + 4 * element)
        f.write(struct.pack("<f", value))
    return copy


def refused(args, ckpt, needles, what):
    """Runs pcmoe; checks a non-zero exit, one error line holding every needle, and the
    checkpoint's files unchanged."""
    before = digests(ckpt)
    code, _, err = run(*args)
    errors = [line for line in err.splitlines() if "error" in line]
    ok = code != 0 and len(errors) == 1 and all(n in errors[0] for n in needles)
    check(ok, f"{what}: exit {code}, one error line naming {needles}")
    if not ok:
        print("   stderr was:", err.strip()[-1500:])
    check(digests(ckpt) == before, f"{what}: the checkpoint's files are unchanged")


names = tensor_offsets(os.path.join(good_run, "checkpoint", "model.safetensors"))
weight = next(n for n in sorted(names) if ".experts." in n and not n.startswith("adam_"))
for tensor in (weight, "adam_v." + weight):
    for value, shown in ((float("nan"), "NaN"), (float("inf"), "+inf")):
        copy = run_with(tensor, value)
        ckpt = os.path.join(copy, "checkpoint")
        needles = [f"tensor '{tensor}'", f"holds {shown} at element 3"]
        what = f"{shown} in {tensor}"
        refused(["eval", "--checkpoint", ckpt], ckpt, needles, f"eval, {what}")
        refused(["generate", "--checkpoint", ckpt, "--tokens", "3"], ckpt, needles, f"generate, {what}")
        refused(["train", "--config", cfg_path, "--out", copy, "--resume", "--until", "3"], ckpt, needles,
                f"train --resume, {what}")
        collab = tiny_config(data_dir, cache, steps=2, warmup=1, eval_every=0)
        collab["data"]["val_fraction"] = 0.34
        collab["parties"] = {"mode": "genre", "n_parties": 2}
        collab["collab"] = {"modes": ["pc-moe"], "init_from": ckpt}
        collab_path = os.path.join(tmp, "collab.json")
        write_json(collab_path, collab)
        refused(["collab", "--config", collab_path, "--out", os.path.join(tmp, "collab-" + os.path.basename(copy))],
                ckpt, needles, f"collab.init_from, {what}")

# Finite but huge weights: the outputs overflow, and eval says so instead of printing nan.
huge = run_with("final_norm", 3e38)
refused(["eval", "--checkpoint", os.path.join(huge, "checkpoint")], os.path.join(huge, "checkpoint"),
        ["the loss is not finite"], "eval of a model whose outputs overflow")

# A run that diverges (a learning rate no model survives) stops at the first non-finite loss;
# its last checkpoint (the good run's, resumed) stays as it was.
diverging = os.path.join(tmp, "diverging")
shutil.copytree(good_run, diverging)
wild = tiny_config(data_dir, cache, steps=12, warmup=1, eval_every=0, lr=1e30, min_lr=1e29, grad_clip=0)
write_json(cfg_path, wild)
refused(["train", "--config", cfg_path, "--out", diverging, "--resume"], os.path.join(diverging, "checkpoint"),
        ["the loss is not finite"], "a diverging run")

shutil.rmtree(tmp)
finish()
