"""The PyTorch peer of the training benchmark: the reference model of tests/reference (fp32,
autograd, torch.optim.AdamW) trained for the same steps on batches of the same shape.
Prints one JSON line: tokens/s and peak RSS."""
import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import pcmoe_ref  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--steps", type=int, required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--vocab-ids", help="file of token ids (one window per line) to train on")
a = ap.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(0)
baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cfg = json.load(open(a.config))
m, t = cfg["model"], cfg["train"]
model = pcmoe_ref.Model(m, seed=int(t.get("seed", 1)), dtype=torch.float32)
trainer = pcmoe_ref.Trainer(model, t)
B, T, A, V = t["batch_size"], m["seq_len"], t.get("grad_accum", 1), m["vocab_size"]
gen = torch.Generator().manual_seed(1)
batches = [[torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(A)] for _ in range(a.steps)]
start = time.perf_counter()
for step in range(a.steps):
    metrics = trainer.step(batches[step])
seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_s": a.steps * A * B * T / seconds, "seconds": seconds,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "rss_before_model_bytes": baseline_rss, "final_loss": metrics["ce"],
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
