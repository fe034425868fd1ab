"""Independent PyTorch reference of the pcmoe model (docs/model.md) with autograd.

Everything here follows docs/model.md literally; nothing is shared with the C++ engine.
Tensors are token-row major: N = B*T rows.  Matrices are [out, in] (y = x @ W.T).

Building blocks (all differentiable, any float dtype):
  rmsnorm, rope, causal_attention, swiglu, moe, embedding, lm_head_ce
Model: Model(nn.Module) holds one nn.Parameter per checkpoint tensor; the checkpoint name
  mapping is explicit (Model.params() -> dict checkpoint name -> Parameter).
Training: lr_at(step, train_cfg), Trainer (AdamW with decay / no-decay groups, clipping,
  gradient accumulation), run_model_check (the `pcmoe_check model` protocol).
Harness units: run_unit(name, tensors, args) (the `pcmoe_check unit` protocol).

Run `/usr/bin/python3 tests/reference/pcmoe_ref.py --self-test` to validate the reference
(gradcheck in float64, naive loop implementations, AdamW formula).
"""
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# building blocks

def bf16_round(t):
    """t rounded to bfloat16 (nearest even), back in t's dtype."""
    return t.to(torch.float32).to(torch.bfloat16).to(t.dtype)


class _Bf16Linear(torch.autograd.Function):
    """x W^T on bf16-rounded inputs, and in backward dy rounded too (model.compute_dtype bf16:
    every product of a projection takes bf16 inputs; the sums are exact here)."""

    @staticmethod
    def forward(ctx, x, w):
        xr, wr = bf16_round(x), bf16_round(w)
        ctx.save_for_backward(xr, wr)
        return torch.matmul(xr, wr.t())

    @staticmethod
    def backward(ctx, dy):
        xr, wr = ctx.saved_tensors
        dyr = bf16_round(dy)
        return torch.matmul(dyr, wr), torch.matmul(dyr.t(), xr)


COMPUTE_DTYPE = "fp32"  # "bf16": the projections (not the router, not attention) as _Bf16Linear


def linear(x, w):
    """x W^T: a projection (attention's q, k, v, o; the MLPs and experts; the head)."""
    if COMPUTE_DTYPE == "bf16":
        return _Bf16Linear.apply(x, w)
    return torch.matmul(x, w.t())



def rmsnorm(x, w, eps):
    """x[..., C] * w / sqrt(mean_c x^2 + eps)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


_ROPE_CACHE = {}


def rope_tables(T, D, theta, dtype, device=None):
    """cos, sin of shape [T, D/2]; angles computed in float64 then cast."""
    key = (T, D, float(theta), dtype, str(device))
    hit = _ROPE_CACHE.get(key)
    if hit is not None:
        return hit
    i = torch.arange(D // 2, dtype=torch.float64)
    inv_freq = float(theta) ** (-2.0 * i / D)
    pos = torch.arange(T, dtype=torch.float64)
    ang = pos[:, None] * inv_freq[None, :]
    res = (torch.cos(ang).to(dtype=dtype, device=device), torch.sin(ang).to(dtype=dtype, device=device))
    if len(_ROPE_CACHE) > 64:
        _ROPE_CACHE.clear()
    _ROPE_CACHE[key] = res
    return res


def rope(x, B, T, n_heads, theta):
    """Rotate-half RoPE on x[N = B*T, n_heads*D]; positions 0..T-1 within each sequence."""
    N, HD = x.shape
    assert N == B * T and HD % n_heads == 0
    D = HD // n_heads
    assert D % 2 == 0, "head size must be even for RoPE"
    cos, sin = rope_tables(T, D, theta, x.dtype, x.device)
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    xv = x.reshape(B, T, n_heads, D)
    x1, x2 = xv[..., : D // 2], xv[..., D // 2:]
    y = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return y.reshape(N, HD)


def causal_attention(q, k, v, B, T, H, KV):
    """q[N, H*D], k/v[N, KV*D] -> [N, H*D]; query head h reads kv head h // (H/KV)."""
    assert H % KV == 0
    N = B * T
    D = q.shape[1] // H
    qh = q.reshape(B, T, H, D).transpose(1, 2)   # B,H,T,D
    kh = k.reshape(B, T, KV, D).transpose(1, 2)  # B,KV,T,D
    vh = v.reshape(B, T, KV, D).transpose(1, 2)
    if KV != H:
        kh = kh.repeat_interleave(H // KV, dim=1)
        vh = vh.repeat_interleave(H // KV, dim=1)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * (1.0 / math.sqrt(D))
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    s = s.masked_fill(mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p, vh)  # B,H,T,D
    return o.transpose(1, 2).reshape(N, H * D)


def rope_attention(q, k, v, B, T, H, KV, theta):
    return causal_attention(rope(q, B, T, H, theta), rope(k, B, T, KV, theta), v, B, T, H, KV)


def swiglu(x, w1, w3, w2):
    """(silu(x w1^T) * (x w3^T)) w2^T."""
    return linear(F.silu(linear(x, w1)) * linear(x, w3), w2)


ROUTING_LOG = None  # set to a list to record every moe() call's expert_idx (diagnostics)


def route(p, top_k):
    """Chosen experts [N, K] in descending p order, ties to the lower expert index."""
    _, order = torch.sort(p.detach(), dim=-1, descending=True, stable=True)
    return order[:, :top_k]


def moe(h, router, w1, w3, w2, top_k, renormalize):
    """Token-choice dropless MoE.

    h[N, C], router[E, C]; w1/w3/w2 either stacked tensors [E, F, C]/[E, F, C]/[E, C, F] or
    sequences of per-expert matrices.  Returns (y[N, C], L_aux, L_z, expert_idx[N, K] int64).
    Each expert runs on the gathered rows of its tokens (index gather, no dense compute).
    """
    N, C = h.shape
    E = router.shape[0]
    K = int(top_k)
    r = torch.matmul(h, router.t())          # [N, E]
    p = torch.softmax(r, dim=-1)
    idx = route(p, K)                        # [N, K]
    if ROUTING_LOG is not None:
        ROUTING_LOG.append((E, idx.clone()))
    g = p.gather(1, idx)                     # [N, K]
    if renormalize:
        g = g / g.sum(dim=-1, keepdim=True)

    flat_e = idx.reshape(-1)
    _, perm = torch.sort(flat_e, stable=True)  # assignments grouped by expert
    counts = torch.bincount(flat_e, minlength=E)
    tok = torch.div(perm, K, rounding_mode="floor")
    gsorted = g.reshape(-1)[perm]
    y = torch.zeros_like(h)
    start = 0
    for e, c in enumerate(counts.tolist()):
        if c == 0:
            continue
        t = tok[start:start + c]
        oe = swiglu(h.index_select(0, t), w1[e], w3[e], w2[e]) * gsorted[start:start + c, None]
        y = y.index_add(0, t, oe)
        start += c

    f = counts.to(p.dtype) / float(N * K)     # no gradient
    P = p.mean(dim=0)
    aux = E * (f * P).sum()
    z = torch.logsumexp(r, dim=-1).pow(2).mean()
    return y, aux, z, idx


def embedding(tokens, wte):
    return wte.index_select(0, tokens.reshape(-1).long())


def lm_head_ce(x, w, targets):
    """Mean cross-entropy of logits x w^T against targets."""
    logits = linear(x, w)
    return F.cross_entropy(logits, targets.reshape(-1).long(), reduction="mean")


# ----------------------------------------------------------------------------------------------
# model

MODEL_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "d_ff_dense",
              "n_experts", "top_k", "moe_every", "renormalize", "tie_embeddings", "qk_norm",
              "rope_theta", "norm_eps", "aux_loss_weight", "z_loss_weight", "seq_len")


def is_moe(l, moe_every):
    return (l + 1) % int(moe_every) == 0


def param_shapes(m):
    """Ordered dict: checkpoint name -> shape (docs/model.md, "Parameters")."""
    C, H, KV = m["d_model"], m["n_heads"], m["n_kv_heads"]
    assert C % H == 0 and H % KV == 0
    D = C // H
    V, E, Fx, Fd = m["vocab_size"], m["n_experts"], m["d_ff"], m["d_ff_dense"]
    shapes = {"wte": (V, C)}
    for l in range(m["n_layers"]):
        pre = f"layers.{l}."
        shapes[pre + "attn_norm"] = (C,)
        shapes[pre + "wq"] = (H * D, C)
        shapes[pre + "wk"] = (KV * D, C)
        shapes[pre + "wv"] = (KV * D, C)
        if m.get("qk_norm", False):
            shapes[pre + "q_norm"] = (H * D,)
            shapes[pre + "k_norm"] = (KV * D,)
        shapes[pre + "wo"] = (C, H * D)
        shapes[pre + "ffn_norm"] = (C,)
        if is_moe(l, m["moe_every"]):
            shapes[pre + "router"] = (E, C)
            for e in range(E):
                shapes[pre + f"experts.{e}.w1"] = (Fx, C)
                shapes[pre + f"experts.{e}.w3"] = (Fx, C)
                shapes[pre + f"experts.{e}.w2"] = (C, Fx)
        else:
            shapes[pre + "mlp.w1"] = (Fd, C)
            shapes[pre + "mlp.w3"] = (Fd, C)
            shapes[pre + "mlp.w2"] = (C, Fd)
    shapes["final_norm"] = (C,)
    if not m["tie_embeddings"]:
        shapes["head"] = (V, C)
    return shapes


def init_params(m, seed=0, dtype=torch.float32, std=0.02):
    """docs/model.md init distribution (torch generator: not bit-identical to pcmoe's)."""
    gen = torch.Generator().manual_seed(int(seed))
    out_std = std / math.sqrt(2.0 * m["n_layers"])
    params = {}
    for name, shape in param_shapes(m).items():
        if len(shape) == 1:
            params[name] = torch.ones(shape, dtype=dtype)
        else:
            s = out_std if name.endswith(".wo") or name.endswith(".w2") else std
            params[name] = (torch.randn(shape, generator=gen, dtype=torch.float64) * s).to(dtype)
    return params


def model_forward(m, P, inputs):
    """P: dict checkpoint name -> tensor; inputs [B, T] -> (logits[N, V], aux_sum, z_sum)."""
    B, T = inputs.shape
    H, KV = m["n_heads"], m["n_kv_heads"]
    eps, theta = m["norm_eps"], m["rope_theta"]
    x = embedding(inputs, P["wte"])
    aux_sum = x.new_zeros(())
    z_sum = x.new_zeros(())
    for l in range(m["n_layers"]):
        pre = f"layers.{l}."
        h = rmsnorm(x, P[pre + "attn_norm"], eps)
        q = linear(h, P[pre + "wq"])
        k = linear(h, P[pre + "wk"])
        v = linear(h, P[pre + "wv"])
        if m.get("qk_norm", False):  # OLMoE: RMSNorm over each row's whole q and k before RoPE
            q = rmsnorm(q, P[pre + "q_norm"], eps)
            k = rmsnorm(k, P[pre + "k_norm"], eps)
        a = rope_attention(q, k, v, B, T, H, KV, theta)
        x = x + linear(a, P[pre + "wo"])
        h = rmsnorm(x, P[pre + "ffn_norm"], eps)
        if is_moe(l, m["moe_every"]):
            E = m["n_experts"]
            w1 = [P[pre + f"experts.{e}.w1"] for e in range(E)]
            w3 = [P[pre + f"experts.{e}.w3"] for e in range(E)]
            w2 = [P[pre + f"experts.{e}.w2"] for e in range(E)]
            y, aux, z, _ = moe(h, P[pre + "router"], w1, w3, w2, m["top_k"], m["renormalize"])
            aux_sum = aux_sum + aux
            z_sum = z_sum + z
        else:
            y = swiglu(h, P[pre + "mlp.w1"], P[pre + "mlp.w3"], P[pre + "mlp.w2"])
        x = x + y
    h = rmsnorm(x, P["final_norm"], eps)
    head = P["wte"] if m["tie_embeddings"] else P["head"]
    logits = linear(h, head)
    return logits, aux_sum, z_sum


def model_loss(m, P, inputs, targets):
    """Returns (loss, ce, aux_sum, z_sum) for one micro-batch."""
    logits, aux_sum, z_sum = model_forward(m, P, inputs)
    ce = F.cross_entropy(logits, targets.reshape(-1).long(), reduction="mean")
    loss = ce + m["aux_loss_weight"] * aux_sum + m["z_loss_weight"] * z_sum
    return loss, ce, aux_sum, z_sum


class Model(nn.Module):
    """One nn.Parameter per checkpoint tensor.  Module attribute names are the checkpoint names
    with '.' replaced by '__' (nn.Module forbids dots); params() gives the checkpoint names."""

    def __init__(self, model_cfg, params=None, seed=0, dtype=torch.float32):
        super().__init__()
        self.cfg = dict(model_cfg)
        shapes = param_shapes(self.cfg)
        if params is None:
            params = init_params(self.cfg, seed, dtype)
        self.names = list(shapes)
        for name in self.names:
            if name not in params:
                raise KeyError(f"missing parameter {name}")
            t = params[name]
            if tuple(t.shape) != tuple(shapes[name]):
                raise ValueError(f"parameter {name}: shape {tuple(t.shape)} != {shapes[name]}")
            self.register_parameter(name.replace(".", "__"),
                                    nn.Parameter(t.detach().to(dtype).clone()))
        extra = set(params) - set(shapes)
        if extra:
            raise KeyError(f"unexpected parameters: {sorted(extra)}")

    def params(self):
        """dict checkpoint name -> nn.Parameter, in checkpoint order."""
        return {n: getattr(self, n.replace(".", "__")) for n in self.names}

    def forward(self, inputs, targets):
        return model_loss(self.cfg, self.params(), inputs, targets)


# ----------------------------------------------------------------------------------------------
# training

def lr_at(step, t):
    """Linear warm-up lr*(s+1)/warmup for s < warmup, then cosine from lr to min_lr at steps."""
    lr, min_lr = float(t["lr"]), float(t["min_lr"])
    warmup, steps = int(t["warmup"]), int(t["steps"])
    if step < warmup:
        return lr * (step + 1) / warmup
    if steps <= warmup:
        return min_lr
    progress = min(1.0, (step - warmup) / (steps - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """AdamW (decay on >= 2-D tensors only), lr schedule, global-norm clipping, accumulation."""

    def __init__(self, model, train_cfg):
        self.model = model
        self.t = dict(train_cfg)
        t = self.t
        self.named = model.params()
        decay = [p for p in self.named.values() if p.dim() >= 2]
        no_decay = [p for p in self.named.values() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": float(t["weight_decay"])},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=float(t["lr"]), betas=(float(t["beta1"]), float(t["beta2"])), eps=float(t["eps"]))
        self.step_idx = 0

    def step(self, micro_batches, keep_grads=False):
        """micro_batches: list of int token tensors [B, T+1].  Returns a metrics dict."""
        t = self.t
        ga = len(micro_batches)
        lr = lr_at(self.step_idx, t)
        for group in self.opt.param_groups:
            group["lr"] = lr
        params = list(self.named.values())
        for p in params:
            p.grad = None
        loss_sum = ce_sum = 0.0
        for mb in micro_batches:
            loss, ce, _, _ = self.model(mb[:, :-1], mb[:, 1:])
            (loss / ga).backward()
            loss_sum += loss.item()
            ce_sum += ce.item()
        for p in params:  # untouched parameters (an expert without tokens) get a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = {n: p.grad.detach().clone() for n, p in self.named.items()} if keep_grads else None
        clip = float(t.get("grad_clip", 0.0))
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2) for p in params]), 2)
        self.opt.step()
        self.step_idx += 1
        return {"loss": loss_sum / ga, "ce": ce_sum / ga, "grad_norm": float(norm), "lr": lr,
                "grads": grads}


def run_model_check(cfg, tensors, dtype=torch.float64):
    """The `pcmoe_check model` protocol: returns the OUT dict (tensors in `dtype`)."""
    m, t = cfg["model"], cfg["train"]
    shapes = param_shapes(m)
    params = {n: tensors[n] for n in shapes}
    model = Model(m, params, dtype=dtype)
    tokens = tensors["tokens"].long()
    S, rows, T1 = tokens.shape
    B, ga = int(t["batch_size"]), int(t["grad_accum"])
    assert rows == B * ga, f"tokens rows {rows} != grad_accum*batch_size {B * ga}"
    trainer = Trainer(model, t)
    out = {}
    hist = {"loss": [], "ce": [], "grad_norm": [], "lr": []}
    for s in range(S):
        micro = [tokens[s, i * B:(i + 1) * B] for i in range(ga)]
        r = trainer.step(micro, keep_grads=(s == 0))
        for k in hist:
            hist[k].append(r[k])
        if s == 0:
            for n, g in r["grads"].items():
                out["grad." + n] = g
    for k, vals in hist.items():
        out[k] = torch.tensor(vals, dtype=dtype)
    for n, p in model.params().items():
        out["param." + n] = p.detach().clone()
    return out


# ----------------------------------------------------------------------------------------------
# harness units (the `pcmoe_check unit` protocol)

def _leaf(t, dtype):
    return t.detach().to(dtype).clone().requires_grad_(True)


def run_unit(name, tensors, args, dtype=torch.float64):
    """Returns the OUT dict of one unit (float outputs in `dtype`, expert_idx int32)."""
    T = tensors
    if name == "rmsnorm":
        x, w = _leaf(T["x"], dtype), _leaf(T["w"], dtype)
        out = rmsnorm(x, w, float(args["eps"]))
        (out * T["dout"].to(dtype)).sum().backward()
        return {"out": out.detach(), "dx": x.grad, "dw": w.grad}
    if name == "rope_attention":
        q, k, v = (_leaf(T[n], dtype) for n in ("q", "k", "v"))
        out = rope_attention(q, k, v, int(args["B"]), int(args["T"]), int(args["H"]),
                             int(args["KV"]), float(args["rope_theta"]))
        (out * T["dout"].to(dtype)).sum().backward()
        return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
    if name == "swiglu":
        x, w1, w3, w2 = (_leaf(T[n], dtype) for n in ("x", "w1", "w3", "w2"))
        out = swiglu(x, w1, w3, w2)
        (out * T["dout"].to(dtype)).sum().backward()
        return {"out": out.detach(), "dx": x.grad, "dw1": w1.grad, "dw3": w3.grad,
                "dw2": w2.grad}
    if name == "moe":
        x, router, w1, w3, w2 = (_leaf(T[n], dtype) for n in ("x", "router", "w1", "w3", "w2"))
        out, aux, z, idx = moe(x, router, w1, w3, w2, int(args["top_k"]),
                               bool(args["renormalize"]))
        obj = ((out * T["dout"].to(dtype)).sum() + float(args["aux_loss_weight"]) * aux
               + float(args["z_loss_weight"]) * z)
        obj.backward()
        grads = {}
        for n, leaf in (("drouter", router), ("dw1", w1), ("dw3", w3), ("dw2", w2)):
            grads[n] = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        return {"out": out.detach(), "aux": aux.detach().reshape(1), "z": z.detach().reshape(1),
                "expert_idx": idx.to(torch.int32), "dx": x.grad, **grads}
    if name == "embedding":
        wte = _leaf(T["wte"], dtype)
        out = embedding(T["tokens"], wte)
        (out * T["dout"].to(dtype)).sum().backward()
        return {"out": out.detach(), "dwte": wte.grad}
    if name == "lm_head_ce":
        x, w = _leaf(T["x"], dtype), _leaf(T["w"], dtype)
        loss = lm_head_ce(x, w, T["targets"])
        loss.backward()
        return {"loss": loss.detach().reshape(1), "dx": x.grad, "dw": w.grad}
    raise ValueError(f"unknown unit {name!r}")


if __name__ == "__main__":
    if "--self-test" in sys.argv[1:]:
        import selfcheck
        sys.exit(selfcheck.main())
    print(__doc__)
