"""Hugging Face Mixtral and OLMoE checkpoints against an independent PyTorch forward (hf_ref.py).

  /usr/bin/python3 tests/reference/test_hf.py --check build/tests/pcmoe_check --pcmoe build/pcmoe

For each case (Mixtral and OLMoE; fp32 and bf16 files; one file and shards with an index; tied
and untied heads; OLMoE with and without top-k renormalisation): hf_ref.py writes a random tiny
model in the Hugging Face layout and computes its logits in float64. pcmoe's logits, from the
Hugging Face directory read directly (as collab.init_from reads it) and from `pcmoe import`'s
checkpoint, must match with max|a-b| / max|b| <= 1e-4. Then `pcmoe export` (in the case's dtype
and sharding) must give tensors equal bit for bit to the stored ones under their Hugging Face
names (read back by hf_ref.py, not by pcmoe), the same config values, and export -> import ->
export must give byte-identical files.
"""
import json
import os
import subprocess
import sys

import torch

import common
import hf_ref

CASES = [
    # tag, arch, dtype, max_shard_bytes, config overrides
    ("mixtral fp32 one file untied", "mixtral", torch.float32, None, {}),
    ("mixtral bf16 sharded untied GQA", "mixtral", torch.bfloat16, 20000, {"theta": 1e6}),
    ("mixtral fp32 sharded tied MHA K1", "mixtral", torch.float32, 30000, {"tie": True, "KV": 4, "K": 1}),
    ("olmoe fp32 sharded no-renorm", "olmoe", torch.float32, 25000, {"E": 6}),
    ("olmoe bf16 one file renorm tied", "olmoe", torch.bfloat16, None, {"renorm": True, "tie": True}),
]
B, T = 2, 16


def pcmoe(binary, *args):
    p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    return p.returncode, p.stdout + p.stderr


def dir_bytes(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d))}


def logits_of(cmd, work, weights, tokens, tag):
    fin, fout = work.file(f"{tag}_in.safetensors"), work.file(f"{tag}_out.safetensors")
    common.write_in(fin, {"tokens": tokens})
    ok, log = common.run_harness(cmd, ["logits", weights, fin, fout])
    return (common.st.read(fout)[0]["logits"], "") if ok else (None, log)


def main():
    args = common.parse_args(__doc__)
    if args.self_test or not args.pcmoe:
        print("ERROR: test_hf needs the real harness and binary: --check PATH --pcmoe PATH")
        return 2
    cmd = common.harness_command(args)
    torch.set_num_threads(1)
    res = common.Results()
    work = common.Workdir(args.keep)
    try:
        for i, (tag, arch, dtype, shard, kw) in enumerate(CASES):
            if args.only and args.only not in tag:
                continue
            print(f"=== {tag}")
            name = f"case{i}"
            c = hf_ref.config(arch, T=T, **kw)
            hf = work.file(name + "_hf")
            stored = hf_ref.write_hf(hf, c, hf_ref.random_weights(c, seed=100 + i), dtype, shard)
            sharded = os.path.exists(os.path.join(hf, "model.safetensors.index.json"))
            res.line(f"{tag}: layout", sharded == (shard is not None), "sharded" if sharded else "one file")
            tokens = torch.randint(0, c["vocab_size"], (B, T), generator=torch.Generator().manual_seed(i))
            ref = hf_ref.forward(c, stored, tokens)

            got, log = logits_of(cmd, work, hf, tokens, name + "_direct")
            if got is None:
                res.fail(f"{tag}: logits from the HF directory", log)
            else:
                res.compare(f"{tag}: logits from the HF directory", got, ref)
            ckpt = work.file(name + "_ckpt")
            code, log = pcmoe(args.pcmoe, "import", "--hf", hf, "--out", ckpt)
            if code != 0:
                res.fail(f"{tag}: pcmoe import", log)
                continue
            got, log = logits_of(cmd, work, ckpt, tokens, name + "_imported")
            if got is None:
                res.fail(f"{tag}: logits from the imported checkpoint", log)
            else:
                res.compare(f"{tag}: logits from the imported checkpoint", got, ref)

            out_args = ["--dtype", "bf16" if dtype == torch.bfloat16 else "fp32"]
            if shard:
                out_args += ["--max-shard-bytes", str(shard)]
            e1, c2, e2 = (work.file(name + s) for s in ("_export1", "_ckpt2", "_export2"))
            steps = [("export", "--checkpoint", ckpt, "--hf", e1, *out_args),
                     ("import", "--hf", e1, "--out", c2),
                     ("export", "--checkpoint", c2, "--hf", e2, *out_args)]
            failed = None
            for step in steps:
                code, log = pcmoe(args.pcmoe, *step)
                if code != 0:
                    failed = (step[0], log)
                    break
            if failed:
                res.fail(f"{tag}: pcmoe {failed[0]}", failed[1])
                continue
            c1, w1 = hf_ref.read_hf(e1)
            same = sorted(w1) == sorted(stored) and all(
                w1[n].dtype == stored[n].dtype and torch.equal(w1[n], stored[n]) for n in stored)
            res.line(f"{tag}: exported tensors", same, f"{len(w1)} tensors, bit-equal" if same else "differ")
            keys = [k for k in c if k not in ("initializer_range",)]
            diff = [k for k in keys if c1.get(k) != c[k]]
            res.line(f"{tag}: exported config", not diff, "same values" if not diff else f"differ: {diff}")
            a, b = dir_bytes(e1), dir_bytes(e2)
            res.line(f"{tag}: export -> import -> export", a == b and len(a) > 1,
                     f"{len(a)} files byte-identical" if a == b else f"differ: {sorted(set(a) ^ set(b))}")
    finally:
        work.close()
    return res.finish("Hugging Face import/export")


if __name__ == "__main__":
    sys.exit(main())
