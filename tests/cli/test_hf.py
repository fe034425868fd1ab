"""pcmoe import / export end to end (the numbers are checked against PyTorch in
tests/reference/test_hf.py): a Mixtral-layout directory with a SentencePiece tokenizer is
imported and generates; `train --init-from` and `collab.init_from` start from the directory
itself (PC-MoE over 4 parties) and every party's model exports; bad input is refused with one
line and nothing written; a party's streaming import reads exactly its backbone and its own
experts, with a peak RSS bounded by the process's own size, not the checkpoint's."""
import json
import os
import random
import shutil
import struct
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json


def st_write(path, tensors, dtype):
    """tensors: name -> (shape, bytes of the F32 data, or a callable giving the raw bytes)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        shape, data, dt = tensors[name][0], tensors[name][1], tensors[name][2] if len(tensors[name]) > 2 else dtype
        if dt == "BF16" and isinstance(data, bytes) and len(data) == 4 * _numel(shape):
            data = b"".join(data[i + 2:i + 4] for i in range(0, len(data), 4))  # truncate fp32 to bf16
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            f.write(b)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def mixtral(V=384, C=32, L=2, H=4, KV=2, F=32, E=8, K=2, T=32):
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": V,
              "hidden_size": C, "intermediate_size": F, "num_hidden_layers": L,
              "num_attention_heads": H, "num_key_value_heads": KV, "num_local_experts": E,
              "num_experts_per_tok": K, "max_position_embeddings": T, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "router_aux_loss_coef": 0.02, "tie_word_embeddings": False,
              "hidden_act": "silu", "sliding_window": None, "torch_dtype": "bfloat16"}
    D = C // H
    shapes = {"model.embed_tokens.weight": [V, C], "model.norm.weight": [C], "lm_head.weight": [V, C]}
    for l in range(L):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": [C], p + "post_attention_layernorm.weight": [C],
                       p + "self_attn.q_proj.weight": [H * D, C], p + "self_attn.k_proj.weight": [KV * D, C],
                       p + "self_attn.v_proj.weight": [KV * D, C], p + "self_attn.o_proj.weight": [C, H * D],
                       p + "block_sparse_moe.gate.weight": [E, C]})
        for e in range(E):
            x = f"{p}block_sparse_moe.experts.{e}."
            shapes.update({x + "w1.weight": [F, C], x + "w3.weight": [F, C], x + "w2.weight": [C, F]})
    return config, shapes


def write_random(directory, config, shapes, shards=2, seed=1):
    """Random weights (norms near 1), bf16, in `shards` files with an index (1: model.safetensors)."""
    os.makedirs(directory)
    rng = random.Random(seed)
    tensors = {}
    for name, shape in shapes.items():
        n = _numel(shape)
        vals = [1 + 0.1 * rng.gauss(0, 1) for _ in range(n)] if len(shape) == 1 else [0.3 * rng.gauss(0, 1) for _ in range(n)]
        tensors[name] = (shape, struct.pack(f"<{n}f", *vals))
    write_json(os.path.join(directory, "config.json"), config)
    names = sorted(tensors)
    if shards == 1:
        st_write(os.path.join(directory, "model.safetensors"), tensors, "BF16")
        return
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        st_write(os.path.join(directory, file), {n: tensors[n] for n in part}, "BF16")
        weight_map.update({n: file for n in part})
    write_json(os.path.join(directory, "model.safetensors.index.json"), {"metadata": {}, "weight_map": weight_map})


tmp = tempfile.mkdtemp(prefix="pcmoe-hf-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
for copy, source in (("three", "one"), ("four", "two")):  # one category per party of 4
    shutil.copytree(os.path.join(data_dir, source), os.path.join(data_dir, copy))
cfg = tiny_config(data_dir, cache, steps=3, eval_every=0)
cfg["model"].update({"n_experts": 8, "renormalize": True, "tie_embeddings": False, "z_loss_weight": 0})
cfg_path = os.path.join(tmp, "tiny.json")
write_json(cfg_path, cfg)
tok = os.path.join(tmp, "tokenizer.model")
code, out, err = run("tokenizer", "--config", cfg_path, "--out", tok)
check(code == 0, "a 384-piece SentencePiece tokenizer for the model")

config, shapes = mixtral()
hf = os.path.join(tmp, "mixtral")
write_random(hf, config, shapes)
shutil.copy(tok, os.path.join(hf, "tokenizer.model"))

# import -> generate
ckpt = os.path.join(tmp, "imported")
code, out, err = run("import", "--hf", hf, "--out", ckpt)
check(code == 0 and "MixtralForCausalLM" in out and "tokenizer.model imported" in out, f"import: {out.strip()}{err.strip()}")
saved = json.load(open(os.path.join(ckpt, "config.json")))["model"]
want = {"vocab_size": 384, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 32, "n_experts": 8,
        "top_k": 2, "renormalize": True, "tie_embeddings": False, "qk_norm": False, "seq_len": 32,
        "aux_loss_weight": 0.02, "z_loss_weight": 0}
check(all(abs(saved[k] - v) < 1e-7 if isinstance(v, float) else saved[k] == v for k, v in want.items()),
      f"the checkpoint's model config maps every key: {saved}")
code, out, err = run("generate", "--checkpoint", ckpt, "--prompt", "alpha beta", "--tokens", "6", "--temperature", "0")
check(code == 0 and out.strip() != "", f"generate on the imported checkpoint: {out.strip()!r}")

# train --init-from the Hugging Face directory: starts from its weights, keeps its tokenizer.
for name, extra in (("scratch", []), ("init", ["--init-from", hf])):
    code, out, err = run("train", "--config", cfg_path, "--out", os.path.join(tmp, "train-" + name), *extra)
    check(code == 0, f"train ({name}) completes: {err.strip()[-200:]}")
first = {n: read_metrics(os.path.join(tmp, "train-" + n, "metrics.jsonl"))[0]["loss"] for n in ("scratch", "init")}
check(abs(first["init"] - first["scratch"]) > 0.05, f"--init-from changes the first loss: {first}")
check(open(os.path.join(tmp, "train-init", "checkpoint", "tokenizer.model"), "rb").read() == open(tok, "rb").read(),
      "train --init-from keeps the directory's tokenizer")

# collab.init_from: PC-MoE over 4 parties from the directory; every party's model exports.
collab = json.loads(json.dumps(cfg))
collab["parties"] = {"mode": "genre", "n_parties": 4}
collab["data"]["val_fraction"] = 0.34
collab["collab"] = {"modes": ["pc-moe"], "init_from": hf}
collab["train"].update(steps=2, warmup=1)
collab_path = os.path.join(tmp, "collab.json")
write_json(collab_path, collab)
code, out, err = run("collab", "--config", collab_path, "--out", os.path.join(tmp, "collab"))
check(code == 0, f"collab with collab.init_from = the Hugging Face directory, 4 parties: {err.strip()[-300:]}")
for p in range(4):
    out_dir = os.path.join(tmp, f"party{p}-hf")
    code, out, err = run("export", "--checkpoint", os.path.join(tmp, "collab", f"party{p}", "checkpoint"),
                         "--hf", out_dir, "--dtype", "bf16")
    ok = code == 0 and json.load(open(os.path.join(out_dir, "config.json")))["architectures"] == ["MixtralForCausalLM"]
    code2, out2, err2 = run("import", "--hf", out_dir, "--out", out_dir + "-back")
    check(ok and code2 == 0, f"party {p}'s model exports and imports back: {out.strip()} {err.strip()}{err2.strip()}")


# Bad input: one line, non-zero exit, nothing written.
def refused(hf_dir, needles, what, *extra):
    out_dir = os.path.join(tmp, "refused")
    code, out, err = run("import", "--hf", hf_dir, "--out", out_dir, *extra)
    lines = [l for l in err.splitlines() if l.strip()]
    ok = code != 0 and len(lines) == 1 and all(n in lines[0] for n in needles)
    check(ok and not os.path.exists(out_dir) and not os.path.exists(out_dir + ".tmp"),
          f"{what}: {lines[0] if lines else '(no error)'}")


def variant(name, edit_config=None, files=None):
    d = os.path.join(tmp, "bad-" + name)
    shutil.copytree(hf, d)
    if edit_config:
        c = json.load(open(os.path.join(d, "config.json")))
        edit_config(c)
        write_json(os.path.join(d, "config.json"), c)
    if files:
        files(d)
    return d


index_name = "model.safetensors.index.json"
shard2 = "model-00002-of-00002.safetensors"
refused(variant("missing-shard", files=lambda d: os.remove(os.path.join(d, shard2))),
        [shard2, "which is missing"], "a missing shard")


def misplace(d):
    idx = json.load(open(os.path.join(d, index_name)))
    name = next(n for n, f in sorted(idx["weight_map"].items()) if f == shard2)
    idx["weight_map"][name] = "model-00001-of-00002.safetensors"
    write_json(os.path.join(d, index_name), idx)


refused(variant("misplaced", files=misplace), ["puts tensor", "which does not hold it"],
        "an index naming a tensor absent from its shard")
refused(variant("llama", lambda c: c.update(architectures=["LlamaForCausalLM"])),
        ["'architectures'", "LlamaForCausalLM"], "an unknown architecture")
refused(variant("scaling", lambda c: c.update(rope_scaling={"type": "linear", "factor": 2.0})),
        ["'rope_scaling'"], "rope_scaling, which the engine lacks")
refused(variant("window", lambda c: c.update(sliding_window=8)), ["'sliding_window'"],
        "a sliding window shorter than the sequence")
refused(variant("act", lambda c: c.update(hidden_act="gelu")), ["'hidden_act'"], "a gelu activation")
refused(variant("unknown-key", lambda c: c.update(quantization_config={"bits": 4})), ["'quantization_config'"],
        "a config key the importer does not know")


def retype(dtype, data_bytes):
    def edit(d):
        path = os.path.join(d, "model-00001-of-00002.safetensors")
        idx = json.load(open(os.path.join(d, index_name)))
        part = sorted(n for n, f in idx["weight_map"].items() if f == os.path.basename(path))
        tensors = {n: (shapes[n], bytes(2 * _numel(shapes[n])) if n != part[0] else bytes(data_bytes(_numel(shapes[n]))),
                       dtype if n == part[0] else "BF16") for n in part}
        st_write(path, tensors, "BF16")
    return edit


refused(variant("q4", files=retype("Q4_K", lambda n: n)), ["dtype 'Q4_K'", "does not know"],
        "a dtype the reader does not know")
refused(variant("f8", files=retype("F8_E4M3", lambda n: n)), ["F8_E4M3", "does not convert"],
        "a dtype the reader knows but does not convert")
code, out, err = run("import", "--hf", hf, "--out", ckpt)
check(code != 0 and "exists" in err, "import over an existing directory is refused")

# Streaming: a synthetic checkpoint (bf16, experts 94% of its bytes); a party's import reads
# exactly its backbone and its own experts; peak RSS stays near an import of a tiny model.
big_config, big_shapes = mixtral(V=384, C=512, L=2, H=8, KV=4, F=1024, E=16, K=2, T=64)
big = os.path.join(tmp, "big")
os.makedirs(big)
write_json(os.path.join(big, "config.json"), big_config)
pattern = struct.pack("<H", 0x3c00)  # bf16 0.0078125: finite, cheap to write
tensors = {n: (s, pattern * _numel(s)) for n, s in big_shapes.items()}
names = sorted(tensors)
weight_map = {}
for i in range(4):
    file = f"model-{i + 1:05d}-of-00004.safetensors"
    st_write(os.path.join(big, file), {n: tensors[n] for n in names[i::4]}, "BF16")
    weight_map.update({n: file for n in names[i::4]})
write_json(os.path.join(big, index_name), {"metadata": {}, "weight_map": weight_map})
del tensors
total = sum(os.path.getsize(os.path.join(big, f)) for f in set(weight_map.values()))
own = sum(2 * _numel(s) for n, s in big_shapes.items()
          if ".experts." not in n or int(n.split(".experts.")[1].split(".")[0]) % 4 == 1)


def imported(hf_dir, name, *extra):
    code, out, err = run("import", "--hf", hf_dir, "--out", os.path.join(tmp, name), "--json", *extra)
    return json.loads(out) if code == 0 else {"error": err}


small = imported(hf, "rss-small")
party = imported(big, "rss-party", "--parties", "4", "--party", "1")
whole = imported(big, "rss-whole")
mib = 1 << 20
print(f"checkpoint {total / mib:.1f} MiB | party 1 of 4 read {party.get('bytes_read', 0) / mib:.1f} MiB, "
      f"peak RSS {party.get('peak_rss_bytes', 0) / mib:.1f} MiB | whole import peak RSS "
      f"{whole.get('peak_rss_bytes', 0) / mib:.1f} MiB | tiny import {small.get('peak_rss_bytes', 0) / mib:.1f} MiB")
check(party.get("bytes_read") == own and own < 0.3 * total,
      f"party 1 of 4 reads exactly its backbone and 8 of 32 experts ({own} of {total} bytes)")
# Bound: the tiny import's RSS plus 16 MiB (a few of the largest tensors in fp32, 2 MiB each).
bound = small.get("peak_rss_bytes", 0) + 16 * mib
check(0 < party.get("peak_rss_bytes", 1 << 60) <= bound and 0 < whole.get("peak_rss_bytes", 1 << 60) <= bound,
      f"peak RSS of the party's and the whole import within the tiny import's + 16 MiB, of a {total / mib:.0f} MiB checkpoint")
shutil.rmtree(tmp, ignore_errors=True)
finish()
