"""The PyTorch peer of the DP-SGD benchmark: plain PyTorch DP-SGD of the same model, per-sample
(per-sequence) gradients with functorch's vmap(grad(...)), then clipping to C, Gaussian noise and
torch.optim.AdamW. vmap needs shapes that do not depend on the routing, so this twin runs every
expert on every token and masks with the top-k gates (the usual way to vmap an MoE); it uses the
reference's layers otherwise. Prints one JSON line."""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from functorch import grad, vmap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import pcmoe_ref as R  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--steps", type=int, required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--batch", type=int, required=True, help="sequences per step")
a = ap.parse_args()

torch.set_num_threads(a.threads)
cfg = json.load(open(a.config))
m, t, p = cfg["model"], cfg["train"], cfg["privacy"]
E, K, L = m["n_experts"], m["top_k"], m["n_layers"]


def moe_masked(h, router, w1, w3, w2):
    r = h @ router.t()
    prob = torch.softmax(r, dim=-1)
    top, idx = torch.topk(prob, K, dim=-1)
    if m["renormalize"]:
        top = top / top.sum(-1, keepdim=True)
    gates = torch.zeros_like(prob).scatter(1, idx, top)
    a_ = torch.einsum("nc,efc->nef", h, w1)
    b_ = torch.einsum("nc,efc->nef", h, w3)
    y = torch.einsum("nef,ecf->nec", F.silu(a_) * b_, w2)
    chosen = torch.zeros_like(prob).scatter(1, idx, torch.ones_like(top))
    f = (chosen.sum(0) / (h.shape[0] * K)).detach()
    aux = E * (f * prob.mean(0)).sum()
    z = torch.logsumexp(r, dim=-1).pow(2).mean()
    return (gates.unsqueeze(-1) * y).sum(1), aux, z


def sequence_loss(P, window):
    inputs, targets = window[:-1], window[1:]
    T = inputs.shape[0]
    x = F.embedding(inputs, P["wte"])
    extra = 0
    for l in range(L):
        pre = f"layers.{l}."
        h = R.rmsnorm(x, P[pre + "attn_norm"], m["norm_eps"])
        att = R.rope_attention(h @ P[pre + "wq"].t(), h @ P[pre + "wk"].t(), h @ P[pre + "wv"].t(), 1, T,
                               m["n_heads"], m["n_kv_heads"], m["rope_theta"])
        x = x + att @ P[pre + "wo"].t()
        h = R.rmsnorm(x, P[pre + "ffn_norm"], m["norm_eps"])
        y, aux, z = moe_masked(h, P[pre + "router"], P[pre + "w1"], P[pre + "w3"], P[pre + "w2"])
        extra = extra + m["aux_loss_weight"] * aux + m["z_loss_weight"] * z
        x = x + y
    logits = R.rmsnorm(x, P["final_norm"], m["norm_eps"]) @ (P["wte"] if m["tie_embeddings"] else P["head"]).t()
    return F.cross_entropy(logits, targets) + extra


assert m["moe_every"] == 1, "the peer models MoE in every layer"
init = R.init_params(m, seed=1)
params = {}
for name, v in init.items():
    if ".experts." in name:
        continue
    params[name] = v
for l in range(L):
    for w in ("w1", "w3", "w2"):
        params[f"layers.{l}.{w}"] = torch.stack([init[f"layers.{l}.experts.{e}.{w}"] for e in range(E)])
params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
opt = torch.optim.AdamW(list(params.values()), lr=t["lr"])
per_sample = vmap(grad(sequence_loss), in_dims=(None, 0))
C, sigma = float(p["clip"]), 1.0
gen = torch.Generator().manual_seed(1)
V, T = m["vocab_size"], m["seq_len"]
start = time.perf_counter()
for step in range(a.steps):
    batch = torch.randint(0, V, (a.batch, T + 1), generator=gen)
    g = per_sample({k: v.detach() for k, v in params.items()}, batch)
    norms = torch.sqrt(sum(x.reshape(a.batch, -1).pow(2).sum(1) for x in g.values()))
    f = torch.clamp(C / (norms + 1e-6), max=1.0)
    for k, v in params.items():
        s = torch.einsum("b,b...->...", f, g[k])
        v.grad = (s + sigma * C * torch.randn_like(s)) / a.batch
    opt.step()
seconds = time.perf_counter() - start
print(json.dumps({"tokens_per_s": a.steps * a.batch * T / seconds,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "torch": torch.__version__}))
