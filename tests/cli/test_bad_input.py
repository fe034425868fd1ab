"""Bad input gets a clear message and a non-zero exit: missing or malformed config, unknown
keys, corrupt or truncated checkpoint, a checkpoint of another model, an empty corpus."""
import os
import shutil
import tempfile

from common import check, finish, run, tiny_config, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-bad-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)


def expect_error(args, needle, what):
    code, out, err = run(*args)
    check(code != 0 and needle in err, f"{what}: exit {code}, stderr mentions {needle!r}")
    if code == 0 or needle not in err:
        print("   stderr was:", err.strip()[:500])


cfg_path = os.path.join(tmp, "cfg.json")
expect_error(["train", "--config", os.path.join(tmp, "nope.json"), "--out", tmp], "cannot open config file", "missing config")
with open(cfg_path, "w") as f:
    f.write('{"model": {"d_model": 32,')
expect_error(["train", "--config", cfg_path, "--out", tmp], "not valid JSON", "malformed JSON")
bad = tiny_config(data_dir, cache)
bad["model"]["d_modle"] = 32
write_json(cfg_path, bad)
expect_error(["train", "--config", cfg_path, "--out", tmp], "unknown config key 'model.d_modle'", "unknown key")
bad = tiny_config(data_dir, cache)
bad["model"]["n_heads"] = 3
write_json(cfg_path, bad)
expect_error(["train", "--config", cfg_path, "--out", tmp], "divisible by n_heads", "inconsistent shape")
bad = tiny_config(data_dir, cache)
bad["train"]["lr"] = "fast"
write_json(cfg_path, bad)
expect_error(["train", "--config", cfg_path, "--out", tmp], "train.lr", "wrong type")
expect_error(["train", "--config"], "needs a value", "missing argument value")

empty = os.path.join(tmp, "empty")
os.makedirs(empty)
write_json(cfg_path, tiny_config(empty, cache))
expect_error(["train", "--config", cfg_path, "--out", tmp], "empty", "empty corpus")
write_json(cfg_path, tiny_config(os.path.join(tmp, "missing-dir"), cache))
expect_error(["train", "--config", cfg_path, "--out", tmp], "missing-dir", "missing corpus directory")

# A good run gives a checkpoint to damage.
good = tiny_config(data_dir, cache, steps=3, warmup=1, eval_every=0)
write_json(cfg_path, good)
out = os.path.join(tmp, "run")
code, _, err = run("train", "--config", cfg_path, "--out", out)
check(code == 0, "a good tiny run trains")
ckpt = os.path.join(out, "checkpoint")
weights = os.path.join(ckpt, "model.safetensors")
original = open(weights, "rb").read()

with open(weights, "wb") as f:
    f.write(original[: len(original) // 2])
expect_error(["eval", "--checkpoint", ckpt], "truncated", "truncated checkpoint")
with open(weights, "wb") as f:
    f.write(original[:8] + b"{not json" + original[17:])
expect_error(["eval", "--checkpoint", ckpt], "malformed header", "corrupt checkpoint header")
with open(weights, "wb") as f:
    f.write(b"\x01\x02")
expect_error(["eval", "--checkpoint", ckpt], "truncated", "two-byte checkpoint")
with open(weights, "wb") as f:
    f.write(original)
code, out_text, _ = run("eval", "--checkpoint", ckpt)
check(code == 0 and "validation loss" in out_text, "restored checkpoint evaluates")

other = tiny_config(data_dir, cache, steps=3, warmup=1, eval_every=0)
other["model"]["d_ff"] = 48
write_json(cfg_path, other)
expect_error(["train", "--config", cfg_path, "--out", out, "--resume"], "model.d_ff is 32 in the checkpoint, 48 in the config", "mismatched checkpoint/config")
expect_error(["eval", "--checkpoint", os.path.join(tmp, "no-ckpt")], "no checkpoint", "missing checkpoint")
expect_error(["generate", "--checkpoint", ckpt, "--top-p", "2"], "top-p", "bad generate option")
expect_error(["frobnicate"], "unknown command", "unknown command")

shutil.rmtree(tmp)
finish()
