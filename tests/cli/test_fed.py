"""`pcmoe collab` with the federated baselines on a tiny generated corpus: two parties, a third
category treated as public (CG-FedLLM's TGAP data). Every fed mode runs on the same tokens per
party; bytes per token follow from the model's shapes and each wire format; int8 reconstructs
almost exactly, the compressors send far fewer bytes; the same seed gives the same report; bad fed
configs are refused with a clear message."""
import json
import math
import os
import shutil
import tempfile

from common import check, finish, read_metrics, run, tiny_config, tiny_corpus, write_json

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
cfg["collab"] = {"modes": ["fedavg", "int8", "topk-ef", "cg-fedllm"]}
cfg["fed"] = {"local_steps": E, "block_size": B, "latent_ratio": RATIO, "tgap_steps": 8, "tgap_blocks": 64,
              "tgap_epochs": 20, "faf_steps": 2, "public_categories": ["three"]}
path = os.path.join(tmp, "cfg.json")
write_json(path, cfg)


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in ("train_seconds", "wall_seconds", "peak_rss_bytes", "seconds")}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


reports = []
for name in ("a", "b"):
    code, out, err = run("collab", "--config", path, "--out", os.path.join(tmp, name))
    check(code == 0, f"collab run {name} with the fed modes completes")
    if code:
        print(err[-3000:])
        finish()
    reports.append(json.load(open(os.path.join(tmp, name, "report.json"))))
print(out)
r = reports[0]
check(strip(reports[0]) == strip(reports[1]), "same seed and config: identical report")
check(set(r["modes"]) == {"fedavg", "int8", "topk-ef", "cg-fedllm"}, "all four fed modes ran")

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
up = {"fedavg": 8 + 4 * N, "int8": 8 + N + 4 * blocks, "topk-ef": 8 + 8 * k,
      "cg-fedllm": 8 + 4 * (1 + lat) * blocks + 4 * A}
down = {"fedavg": 4 * N, "int8": 4 * N, "topk-ef": 4 * N, "cg-fedllm": 4 * (N + A)}
for mode, run_ in r["modes"].items():
    check(run_["rounds"] == rounds and run_["trainable_floats"] == N, f"{mode}: {rounds} rounds over {N} floats")
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


def refused(change, needle, what):
    bad = json.loads(json.dumps(cfg))
    change(bad)
    write_json(path, bad)
    code, _, err = run("collab", "--config", path, "--out", os.path.join(tmp, "bad"))
    check(code != 0 and needle in err, what + ": " + err.strip()[-140:])


refused(lambda c: c["fed"].update(local_steps=4), "must divide train.steps", "local_steps that do not divide steps")
refused(lambda c: c["fed"].pop("public_categories"), "fed.public_categories", "cg-fedllm without public data")
refused(lambda c: c["fed"].update(public_categories=["one"]), "held by a party", "a party's category as public data")
refused(lambda c: c["fed"].update(latent_ratio=3), "latent_ratio", "a latent ratio that does not divide the block")
refused(lambda c: c["fed"].update(rounds=3), "unknown config key 'fed.rounds'", "an unknown fed key")

shutil.rmtree(tmp)
finish()
