"""The PyTorch peer of the DP-SGD benchmark: the reference model of tests/reference (fp32,
autograd) with per-sequence gradients clipped, summed and noised, then torch.optim.AdamW.
Per-sequence gradients come from one backward per sequence: functorch's vmap cannot batch the
reference MoE (its routing is data-dependent Python control flow), which is also what Opacus
falls back to for modules it has no per-sample rule for. Prints one JSON line."""
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
ap.add_argument("--batch", type=int, required=True, help="sequences per step")
a = ap.parse_args()

torch.set_num_threads(a.threads)
cfg = json.load(open(a.config))
m, t, p = cfg["model"], cfg["train"], cfg["privacy"]
model = pcmoe_ref.Model(m, seed=1, dtype=torch.float32)
params = list(model.params().values())
opt = torch.optim.AdamW(params, lr=t["lr"])
C, sigma = float(p["clip"]), 1.0
gen = torch.Generator().manual_seed(1)
V, T = m["vocab_size"], m["seq_len"]
start = time.perf_counter()
for step in range(a.steps):
    batch = torch.randint(0, V, (a.batch, T + 1), generator=gen)
    total = [torch.zeros_like(q) for q in params]
    for b in range(a.batch):
        for q in params:
            q.grad = None
        loss, _, _, _ = model(batch[b:b + 1, :-1], batch[b:b + 1, 1:])
        loss.backward()
        grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        f = min(1.0, C / (float(norm) + 1e-6))
        for acc, g in zip(total, grads):
            acc.add_(g, alpha=f)
    for q, acc in zip(params, total):
        q.grad = (acc + sigma * C * torch.randn_like(acc)) / a.batch
    opt.step()
seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_s": a.steps * a.batch * T / seconds,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "torch": torch.__version__}))
