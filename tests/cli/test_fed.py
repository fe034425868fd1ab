"""`pcmoe collab` with the federated baselines on a tiny generated corpus: two parties, a third
category treated as public (CG-FedLLM's TGAP data). Every fed mode runs on the same tokens per
party; bytes per token follow from the model's shapes and each wire format (fedavg-lora: the
adapters' shapes); int8 reconstructs almost exactly, the compressors send far fewer bytes; the
same seed gives the same report; every mode records its learning curve and the run draws it
(curves.svg) and saves its global model; the trained autoencoder is saved and can start a later run; bad fed configs are
refused with a clear one-line message and a non-zero exit."""
import json
import math
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json, twice, without_timings

tmp = tempfile.mkdtemp(prefix="pcmoe-fed-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "green"]
os.makedirs(os.path.join(data_dir, "three"))
for d in range(6):
    with open(os.path.join(data_dir, "three", f"doc{d}.txt"), "w") as f:
        f.write("\n".join(" ".join(words[(d + s * 7 + k * 3) % 10] for k in range(8)) + "." for s in range(40)) + "\n")

STEPS, E, B, RATIO = 6, 2, 256, 64
cfg = tiny_config(data_dir, cache, steps=STEPS, warmup=1, eval_windows=4)
cfg["data"]["val_fraction"] = 0.34
cfg["parties"] = {"mode": "genre", "n_parties": 2, "genres": [["one"], ["two"]]}
MODES = ["fedavg", "int8", "topk-ef", "cg-fedllm", "fedavg-lora"]
cfg["collab"] = {"modes": MODES}
cfg["fed"] = {"local_steps": E, "block_size": B, "latent_ratio": RATIO, "tgap_steps": 8, "tgap_blocks": 64,
              "tgap_epochs": 20, "faf_steps": 2, "public_categories": ["three"]}
path = os.path.join(tmp, "cfg.json")
write_json(path, cfg)


reports, out = twice(path, tmp, "with the fed modes ")
print(out)
r = reports[0]
check(without_timings(reports[0]) == without_timings(reports[1]), "same seed and config: identical report")
check(set(r["modes"]) == set(MODES), "all five fed modes ran")

# Trainable floats from the model's shapes (tied embeddings: no separate head).
m = cfg["model"]
C, V, F, Ex, L = m["d_model"], m["vocab_size"], m["d_ff"], m["n_experts"], m["n_layers"]
hd = C // m["n_heads"]
per_layer = C + C * m["n_heads"] * hd + 2 * C * m["n_kv_heads"] * hd + C * m["n_heads"] * hd + C + Ex * C + Ex * 3 * F * C
N = V * C + L * per_layer + C
rounds = STEPS // E
tokens = STEPS * cfg["train"]["batch_size"] * m["seq_len"]
blocks = math.ceil(N / B)
lat = B // RATIO
A = 2 * B * lat + B + lat
k = 4 * (1 + lat) * blocks // 8
# fedavg-lora (default rank 8 on wq, wk, wv, wo and the experts' matrices): r (in + out) per matrix.
R8, KVD = 8, m["n_kv_heads"] * hd
NL = L * R8 * ((C + m["n_heads"] * hd) * 2 + 2 * (C + KVD) + Ex * 3 * (C + F))
up = {"fedavg": 8 + 4 * N, "int8": 8 + N + 4 * blocks, "topk-ef": 8 + 8 * k,
      "cg-fedllm": 8 + 4 * (1 + lat) * blocks + 4 * A, "fedavg-lora": 8 + 4 * NL}
down = {"fedavg": 4 * N, "int8": 4 * N, "topk-ef": 4 * N, "cg-fedllm": 4 * (N + A), "fedavg-lora": 4 * NL}
floats = {mode: N for mode in MODES}
floats["fedavg-lora"] = NL
for mode, run_ in r["modes"].items():
    check(run_["rounds"] == rounds and run_["trainable_floats"] == floats[mode],
          f"{mode}: {rounds} rounds over {floats[mode]} floats")
    for p, party in enumerate(run_["parties"]):
        check(0 < party["val_loss_own"] < 20 and 0 < party["val_loss_pooled"] < 20, f"{mode} party {p}: losses present")
        check(abs(party["bytes_sent_per_token"] - rounds * up[mode] / tokens) < 1e-9,
              f"{mode} party {p}: up {party['bytes_sent_per_token']:.2f} B/token = {rounds} x {up[mode]} / {tokens}")
        check(abs(party["bytes_received_per_token"] - rounds * down[mode] / tokens) < 1e-9,
              f"{mode} party {p}: down {party['bytes_received_per_token']:.2f} B/token")
        mem = party["memory"]
        check(mem["total"] == sum(mem[c] for c in ("parameters", "gradients", "optimizer", "activations", "scratch",
                                                    "transport", "round_buffers", "codec")), f"{mode} party {p}: memory total")
check(r["modes"]["topk-ef"]["topk_k"] == k, f"top-k sends k = {k} pairs, the autoencoder's uplink bytes")
for p in range(2):
    i8 = r["modes"]["int8"]["parties"][p]
    check(i8["reconstruction_cosine"] > 0.999 and i8["reconstruction_snr_db"] > 35,
          f"int8 party {p}: cosine {i8['reconstruction_cosine']:.5f}, SNR {i8['reconstruction_snr_db']:.1f} dB")
    fa, i8l = r["modes"]["fedavg"]["parties"][p]["val_loss_own"], i8["val_loss_own"]
    check(abs(fa - i8l) < 0.05, f"int8 party {p} trains like fp32 FedAvg: {i8l:.4f} vs {fa:.4f}")
    for mode in ("topk-ef", "cg-fedllm"):
        q = r["modes"][mode]["parties"][p]
        check(-1 <= q["reconstruction_cosine"] <= 1 and math.isfinite(q["reconstruction_snr_db"]),
              f"{mode} party {p}: cosine {q['reconstruction_cosine']:.3f}, SNR {q['reconstruction_snr_db']:.2f} dB")
tg = r["modes"]["cg-fedllm"]["tgap"]
check(tg["held_out_mse_pretrained"] < tg["held_out_mse_untrained"],
      f"TGAP lowers the held-out reconstruction error: {tg['held_out_mse_untrained']:.3f} -> {tg['held_out_mse_pretrained']:.3f}")
metrics = read_metrics(os.path.join(tmp, "a", "metrics.jsonl"))
for mode in r["modes"]:
    lines = [(x["round"], x["party"]) for x in metrics if x["mode"] == mode]
    check(sorted(lines) == [(rr, p) for rr in range(rounds) for p in range(2)], f"{mode}: one metrics line per round and party")
check(all("faf_mse" in x for x in metrics if x["mode"] == "cg-fedllm"), "cg-fedllm logs the FAF reconstruction error")
lora = r["modes"]["fedavg-lora"]
check(lora["lora"] == {"rank": 8, "alpha": 16.0, "targets": ["wq", "wk", "wv", "wo", "experts"]} and
      lora["server_optimizer"] == "avg", "fedavg-lora reports its adapters and plain averaging")
lg = lora["parties"][0]["memory"]["gradients"]
check(4 * NL <= lg < 4 * NL + 64 * 4 * 16, f"fedavg-lora holds gradients of the adapters only: {lg} bytes")

# Every mode saves its released model (fedavg-lora: the base with the adapters merged), which
# `pcmoe eval` reads and scores as the report scored the final global model (on other windows).
for mode in MODES:
    code, out, err = run("eval", "--checkpoint", os.path.join(tmp, "a", mode, "checkpoint"))
    loss = float(out.split()[2]) if code == 0 else float("nan")
    end = r["curves"][mode][-1]["val_loss_pooled"]
    check(code == 0 and abs(loss - end) < 0.1, f"{mode}: its saved global model evaluates to {loss:.3f} (report {end:.3f})")

# Learning curves: start, every eval_every = 4 steps (rounds of E = 2), end; bytes as counted.
tpt = cfg["train"]["batch_size"] * m["seq_len"]
for mode in MODES:
    c = r["curves"][mode]
    check([p["tokens_per_party"] for p in c] == [0, 4 * tpt, 6 * tpt], f"{mode}: curve at 0, 4 and 6 steps")
    check(c[-1]["bytes_sent_per_party"] == rounds * up[mode] and c[0]["bytes_sent_per_party"] == 0,
          f"{mode}: curve's bytes sent {c[-1]['bytes_sent_per_party']:.0f} = {rounds} x {up[mode]}")
    check(all(0 < p["val_loss_pooled"] < 20 for p in c), f"{mode}: curve {[round(p['val_loss_pooled'], 3) for p in c]}")
    if mode in ("fedavg", "int8", "fedavg-lora"):  # the compressors need not improve in 6 steps
        check(c[-1]["val_loss_pooled"] < c[0]["val_loss_pooled"], f"{mode}: its curve falls")
svg = open(os.path.join(tmp, "a", "curves.svg")).read() if os.path.exists(os.path.join(tmp, "a", "curves.svg")) else ""
check(svg.startswith("<?xml") and "<svg" in svg and all(mode in svg for mode in MODES), "curves.svg draws every mode")
dat = open(os.path.join(tmp, "a", "curves.dat")).read()
check(dat.count("\n\n\n") == len(MODES), "curves.dat: one block per mode")

# The trained autoencoder starts another run (no TGAP); one of another block size is refused.
ae_path = os.path.join(tmp, "a", "cg-fedllm", "autoencoder.safetensors")
check(os.path.exists(ae_path), "cg-fedllm saves its autoencoder")
again = json.loads(json.dumps(cfg))
again["collab"]["modes"] = ["cg-fedllm"]
again["fed"].update(autoencoder=ae_path, public_categories=[])
write_json(path, again)
code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "again"))
ra = json.load(open(os.path.join(tmp, "again", "report.json"))) if code == 0 else {"modes": {}}
check(code == 0 and "tgap" not in ra["modes"].get("cg-fedllm", {}) and
      ra["modes"]["cg-fedllm"]["autoencoder"]["loaded_from"] == ae_path, "a saved autoencoder replaces TGAP")


def refused(change, needle, what):
    bad = json.loads(json.dumps(cfg))
    change(bad)
    write_json(path, bad)
    code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "bad"))
    last = err.strip().splitlines()[-1] if err.strip() else ""
    check(code != 0 and needle in last and "error:" in last, what + ": " + last[-200:])


refused(lambda c: c["fed"].update(local_steps=4), "must divide train.steps", "local_steps that do not divide steps")
refused(lambda c: c["fed"].pop("public_categories"), "fed.public_categories", "cg-fedllm without public data")
refused(lambda c: c["fed"].update(public_categories=["one"]), "held by a party", "a party's category as public data")
refused(lambda c: c["fed"].update(latent_ratio=3), "latent_ratio", "a latent ratio that does not divide the block")
refused(lambda c: c["fed"].update(rounds=3), "unknown config key 'fed.rounds'", "an unknown fed key")
refused(lambda c: c["fed"].update(latent_ratio=2 * B), "leaves no latent", "a compression ratio that leaves no latent")
refused(lambda c: (c["collab"].update(modes=["int8"]), c["fed"].update(block_size=1 << 20)),
        "larger than the update", "a block size larger than the update")
refused(lambda c: c["fed"].update(lora_rank=17), "LoRA rank 17 exceeds the rank of layers.0.wk [16 x 32], at most 16",
        "a LoRA rank above a matrix's rank")
refused(lambda c: c["fed"].update(lora_targets=["wq", "embedding"]), "unknown LoRA target 'embedding'", "an unknown LoRA target")
refused(lambda c: c["fed"].update(server_optimizer="sgd"), "server_optimizer", "an unknown server optimizer")
refused(lambda c: (c["collab"].update(modes=["cg-fedllm"]), c["fed"].update(block_size=128, autoencoder=ae_path)),
        "codes blocks of 256 floats into 4; this run's fed.block_size and fed.latent_ratio need 128 into 2",
        "an autoencoder checkpoint that does not fit")
refused(lambda c: (c["collab"].update(modes=["cg-fedllm"]), c["fed"].update(autoencoder=os.path.join(tmp, "none.st"))),
        "none.st", "a missing autoencoder checkpoint")

shutil.rmtree(tmp)
finish()
