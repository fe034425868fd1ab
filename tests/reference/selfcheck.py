"""Self-validation of the PyTorch reference (no pcmoe binary involved).

  /usr/bin/python3 tests/reference/selfcheck.py        (or pcmoe_ref.py --self-test)

1. torch.autograd.gradcheck in float64 on tiny shapes for every unit and for the whole model
   loss (analytic autograd gradients vs finite differences, including the piecewise-constant
   routing and the detached f_e of the Switch loss);
2. the vectorised blocks against naive per-element / per-token loop implementations written
   straight from docs/model.md (forward values and gradients);
3. exact top-k tie handling (lower expert index wins);
4. the Trainer (torch AdamW, clipping, accumulation, schedule) against a hand-written AdamW
   following the docs/model.md formulas;
5. the safetensors reader/writer round trip.
"""
import math
import os
import sys
import tempfile

import torch

import pcmoe_ref as R
import st

FAILS = []


def report(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}  {detail}")
    if not ok:
        FAILS.append(name)


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    d = (a - b).abs().max().item() if a.numel() else 0.0
    s = b.abs().max().item() if b.numel() else 0.0
    return d / s if s > 0 else d


def close(name, a, b, tol=1e-10):
    r = rel(a, b)
    report(name, tuple(a.shape) == tuple(b.shape) and r <= tol, f"rel={r:.3e}")


def gc(name, fn, inputs):
    try:
        ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    except Exception as e:  # gradcheck raises on mismatch
        print(str(e)[:2000])
        ok = False
    report("gradcheck " + name, ok)


def rnd(*shape, scale=1.0, g=None):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# naive implementations, straight from docs/model.md

def naive_rmsnorm(x, w, eps):
    rows = []
    for t in range(x.shape[0]):
        ms = sum(x[t, c] * x[t, c] for c in range(x.shape[1])) / x.shape[1]
        rows.append(torch.stack([x[t, c] * w[c] / torch.sqrt(ms + eps) for c in range(x.shape[1])]))
    return torch.stack(rows)


def naive_rope(x, B, T, nh, theta):
    D = x.shape[1] // nh
    out = [[None] * (nh * D) for _ in range(B * T)]
    for b in range(B):
        for pos in range(T):
            t = b * T + pos
            for h in range(nh):
                o = h * D
                for i in range(D // 2):
                    th = theta ** (-2.0 * i / D)
                    phi = pos * th
                    c, s = math.cos(phi), math.sin(phi)
                    out[t][o + i] = x[t, o + i] * c - x[t, o + i + D // 2] * s
                    out[t][o + i + D // 2] = x[t, o + i + D // 2] * c + x[t, o + i] * s
    return torch.stack([torch.stack(r) for r in out])


def naive_attention(q, k, v, B, T, H, KV):
    D = q.shape[1] // H
    rows = []
    for b in range(B):
        for i in range(T):
            heads = []
            for h in range(H):
                kvh = h // (H // KV)
                qv = q[b * T + i, h * D:(h + 1) * D]
                scores = [torch.dot(qv, k[b * T + j, kvh * D:(kvh + 1) * D]) / math.sqrt(D)
                          for j in range(i + 1)]
                m = max(s.item() for s in scores)
                ex = [torch.exp(s - m) for s in scores]
                den = sum(ex)
                o = sum((ex[j] / den) * v[b * T + j, kvh * D:(kvh + 1) * D] for j in range(i + 1))
                heads.append(o)
            rows.append(torch.cat(heads))
    return torch.stack(rows)


def naive_swiglu_row(x, w1, w3, w2):
    a = w1 @ x
    b = w3 @ x
    hid = a * (1.0 / (1.0 + torch.exp(-a))) * b
    return w2 @ hid


def naive_moe(h, router, w1, w3, w2, K, renormalize):
    N, C = h.shape
    E = router.shape[0]
    ys, chosen, probs, lses = [], [], [], []
    for t in range(N):
        r = [torch.dot(h[t], router[e]) for e in range(E)]
        m = max(x.item() for x in r)
        ex = [torch.exp(x - m) for x in r]
        den = sum(ex)
        p = [x / den for x in ex]
        lses.append(torch.log(den) + m)
        probs.append(torch.stack(p))
        # K largest p, ties to the lower index: sort by (-p, e)
        S = sorted(range(E), key=lambda e: (-p[e].item(), e))[:K]
        chosen.append(S)
        gs = [p[e] for e in S]
        if renormalize:
            tot = sum(gs)
            gs = [g / tot for g in gs]
        y = sum(g * naive_swiglu_row(h[t], w1[e], w3[e], w2[e]) for g, e in zip(gs, S))
        ys.append(y)
    counts = [sum(1 for S in chosen if e in S) for e in range(E)]
    P = torch.stack(probs).mean(0)
    aux = E * sum((counts[e] / (N * K)) * P[e] for e in range(E))
    z = sum(l * l for l in lses) / N
    return torch.stack(ys), aux, z, torch.tensor(chosen, dtype=torch.long)


# ----------------------------------------------------------------------------------------------

def check_gradcheck():
    g = torch.Generator().manual_seed(1)
    x, w = rnd(3, 6, g=g), rnd(6, g=g)
    gc("rmsnorm", lambda x, w: R.rmsnorm(x, w, 1e-5), (x, w))
    for (B, T, H, KV, D) in [(2, 3, 4, 2, 4), (1, 4, 2, 2, 6)]:
        q, k, v = rnd(B * T, H * D, g=g), rnd(B * T, KV * D, g=g), rnd(B * T, KV * D, g=g)
        gc(f"rope_attention B{B}T{T}H{H}KV{KV}D{D}",
           lambda q, k, v: R.rope_attention(q, k, v, B, T, H, KV, 10000.0), (q, k, v))
    x, w1, w3, w2 = rnd(4, 5, g=g), rnd(7, 5, g=g), rnd(7, 5, g=g), rnd(5, 7, g=g)
    gc("swiglu", R.swiglu, (x, w1, w3, w2))
    for K, renorm in [(1, False), (1, True), (2, False), (2, True), (4, True)]:
        N, C, E, Fx = 6, 4, 4, 3
        x, router = rnd(N, C, g=g), rnd(E, C, g=g)
        w1, w3, w2 = rnd(E, Fx, C, g=g), rnd(E, Fx, C, g=g), rnd(E, C, Fx, g=g)

        def fn(x, router, w1, w3, w2):
            y, aux, z, _ = R.moe(x, router, w1, w3, w2, K, renorm)
            return y, aux, z
        gc(f"moe K{K} renorm={renorm}", fn, (x, router, w1, w3, w2))
    wte = rnd(5, 3, g=g)
    tokens = torch.tensor([0, 3, 3, 4, 1, 0])
    gc("embedding", lambda w: R.embedding(tokens, w), (wte,))
    x, w = rnd(6, 4, g=g), rnd(7, 4, g=g)
    targets = torch.tensor([0, 6, 2, 2, 5, 1])
    gc("lm_head_ce", lambda x, w: R.lm_head_ce(x, w, targets), (x, w))
    for tie, moe_every, renorm in [(True, 1, False), (False, 2, True)]:
        m = tiny_cfg(tie, moe_every, renorm)
        names = list(R.param_shapes(m))
        P0 = R.init_params(m, seed=3, dtype=torch.float64, std=0.3)
        for n in names:
            if P0[n].dim() == 1:
                P0[n] = P0[n] + 0.1 * torch.randn(P0[n].shape, generator=g, dtype=torch.float64)
        toks = torch.randint(0, m["vocab_size"], (2, m["seq_len"] + 1), generator=g)

        def fn(*ps):
            P = dict(zip(names, ps))
            return R.model_loss(m, P, toks[:, :-1], toks[:, 1:])[0]
        gc(f"model loss tie={tie} moe_every={moe_every}", fn,
           tuple(P0[n].clone().requires_grad_(True) for n in names))


def tiny_cfg(tie, moe_every, renorm, K=2):
    return {"vocab_size": 11, "d_model": 8, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
            "d_ff": 6, "d_ff_dense": 5, "n_experts": 3, "top_k": K, "moe_every": moe_every,
            "renormalize": renorm, "tie_embeddings": tie, "rope_theta": 10000.0,
            "norm_eps": 1e-5, "aux_loss_weight": 0.1, "z_loss_weight": 0.01, "seq_len": 4}


def grads_of(outputs, inputs, douts):
    obj = sum((o * d).sum() for o, d in zip(outputs, douts))
    return torch.autograd.grad(obj, inputs, allow_unused=True)


def check_naive():
    g = torch.Generator().manual_seed(2)
    # rmsnorm
    x, w = rnd(5, 7, scale=3.0, g=g), rnd(7, g=g)
    a, b = R.rmsnorm(x, w, 1e-6), naive_rmsnorm(x, w, 1e-6)
    close("naive rmsnorm out", a, b)
    d = torch.randn(a.shape, generator=g, dtype=torch.float64)
    for n, ga, gb in zip(("dx", "dw"), grads_of([a], (x, w), [d]), grads_of([b], (x, w), [d])):
        close("naive rmsnorm " + n, ga, gb)
    # rope + attention
    for (B, T, H, KV, D, theta) in [(2, 5, 4, 2, 6, 10000.0), (1, 6, 3, 3, 4, 100.0),
                                    (2, 4, 4, 1, 8, 500000.0)]:
        q, k, v = rnd(B * T, H * D, g=g), rnd(B * T, KV * D, g=g), rnd(B * T, KV * D, g=g)
        close(f"naive rope H{H}D{D}", R.rope(q, B, T, H, theta), naive_rope(q, B, T, H, theta))
        a = R.rope_attention(q, k, v, B, T, H, KV, theta)
        b = naive_attention(naive_rope(q, B, T, H, theta), naive_rope(k, B, T, KV, theta), v,
                            B, T, H, KV)
        tag = f"B{B}T{T}H{H}KV{KV}D{D}"
        close("naive rope_attention out " + tag, a, b)
        d = torch.randn(a.shape, generator=g, dtype=torch.float64)
        for n, ga, gb in zip(("dq", "dk", "dv"), grads_of([a], (q, k, v), [d]),
                             grads_of([b], (q, k, v), [d])):
            close(f"naive rope_attention {n} {tag}", ga, gb)
    # moe, including an empty expert and exact ties
    cases = []
    for K, renorm in [(1, False), (2, True), (2, False), (3, True)]:
        N, C, E, Fx = 9, 4, 5, 3
        cases.append((f"K{K} renorm={renorm}", rnd(N, C, g=g), rnd(E, C, g=g), K, renorm))
    # empty expert: positive x, expert 1 router row strongly negative
    x = (torch.rand(8, 4, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    router = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3
    router[1] = -4.0
    cases.append(("empty expert", x, router.requires_grad_(True), 2, True))
    # ties: duplicated router rows, dyadic values
    x = (torch.randint(-6, 7, (10, 4), generator=g).double() / 16).requires_grad_(True)
    router = torch.randint(-6, 7, (5, 4), generator=g).double() / 16
    router[3] = router[1]
    cases.append(("ties K1", x, router.clone().requires_grad_(True), 1, False))
    cases.append(("ties K2", x, router.clone().requires_grad_(True), 2, True))
    cases.append(("zero router K2", x, torch.zeros(5, 4, dtype=torch.float64, requires_grad=True),
                  2, False))
    for tag, x, router, K, renorm in cases:
        E, C = router.shape
        Fx = 3
        w1, w3, w2 = rnd(E, Fx, C, g=g), rnd(E, Fx, C, g=g), rnd(E, C, Fx, g=g)
        ya, auxa, za, ia = R.moe(x, router, w1, w3, w2, K, renorm)
        yb, auxb, zb, ib = naive_moe(x, router, w1, w3, w2, K, renorm)
        close(f"naive moe out {tag}", ya, yb)
        close(f"naive moe aux {tag}", auxa.reshape(1), auxb.reshape(1))
        close(f"naive moe z {tag}", za.reshape(1), zb.reshape(1))
        report(f"naive moe expert_idx {tag}", torch.equal(ia, ib))
        d = torch.randn(ya.shape, generator=g, dtype=torch.float64)
        douts = [d, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)]
        inputs = (x, router, w1, w3, w2)
        for n, ga, gb in zip(("dx", "drouter", "dw1", "dw3", "dw2"),
                             grads_of([ya, auxa, za], inputs, douts),
                             grads_of([yb, auxb, zb], inputs, douts)):
            ga = torch.zeros_like(inputs[["dx", "drouter", "dw1", "dw3", "dw2"].index(n)]) \
                if ga is None else ga
            gb = torch.zeros_like(ga) if gb is None else gb
            close(f"naive moe {n} {tag}", ga, gb)
        if tag.startswith("ties"):
            pp = torch.softmax(x.detach() @ router.detach().t(), dim=-1)
            sp, _ = torch.sort(pp, dim=-1, descending=True)
            nt = int((sp[:, :K] == sp[:, 1:K + 1]).any(dim=1).sum())
            report(f"{tag}: ties present in top-(K+1)", nt > 0, f"{nt} tokens")
        if tag == "empty expert":
            report("empty expert really empty", not (ia == 1).any().item())


def check_ties():
    p = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.1, 0.4], [0.3, 0.2, 0.3, 0.2]],
                     dtype=torch.float32)
    idx = R.route(p, 3)
    want = torch.tensor([[0, 1, 2], [1, 3, 0], [0, 2, 1]])
    report("tie order (stable descending sort)", torch.equal(idx, want), str(idx.tolist()))
    # large E to catch a non-stable sort implementation path
    p = torch.full((3, 64), 1.0 / 64)
    report("tie order E=64 uniform", torch.equal(R.route(p, 8), torch.arange(8).expand(3, 8)))


def manual_train(m, t, P0, tokens):
    """Hand-written AdamW per docs/model.md; returns params after all steps and per-step lr."""
    P = {n: v.clone() for n, v in P0.items()}
    mstate = {n: torch.zeros_like(v) for n, v in P.items()}
    vstate = {n: torch.zeros_like(v) for n, v in P.items()}
    B, ga = t["batch_size"], t["grad_accum"]
    b1, b2, eps, wd, clip = t["beta1"], t["beta2"], t["eps"], t["weight_decay"], t["grad_clip"]
    lrs, norms = [], []
    for s in range(tokens.shape[0]):
        # schedule, written independently
        if s < t["warmup"]:
            lr = t["lr"] * (s + 1) / t["warmup"]
        else:
            prog = (s - t["warmup"]) / (t["steps"] - t["warmup"])
            lr = t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * prog))
        lrs.append(lr)
        leaves = {n: v.clone().requires_grad_(True) for n, v in P.items()}
        grads = {n: torch.zeros_like(v) for n, v in P.items()}
        for i in range(ga):
            mb = tokens[s, i * B:(i + 1) * B]
            loss = R.model_loss(m, leaves, mb[:, :-1], mb[:, 1:])[0] / ga
            gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for n, gr in zip(leaves, gs):
                if gr is not None:
                    grads[n] += gr
        norm = math.sqrt(sum(float((gr * gr).sum()) for gr in grads.values()))
        norms.append(norm)
        coef = clip / (norm + 1e-6)
        if clip > 0 and coef < 1:
            grads = {n: gr * coef for n, gr in grads.items()}
        step = s + 1
        for n in P:
            p = P[n]
            if p.dim() >= 2:
                p = p - lr * wd * p
            mstate[n] = b1 * mstate[n] + (1 - b1) * grads[n]
            vstate[n] = b2 * vstate[n] + (1 - b2) * grads[n] * grads[n]
            denom = vstate[n].sqrt() / math.sqrt(1 - b2 ** step) + eps
            P[n] = p - (lr / (1 - b1 ** step)) * mstate[n] / denom
    return P, lrs, norms


def check_training():
    g = torch.Generator().manual_seed(4)
    for tie, moe_every, renorm, ga in [(True, 1, False, 2), (False, 2, True, 1)]:
        m = tiny_cfg(tie, moe_every, renorm)
        t = {"batch_size": 2, "grad_accum": ga, "steps": 7, "lr": 1e-2, "min_lr": 1e-3,
             "warmup": 2, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
             "grad_clip": 0.5, "seed": 0, "threads": 1}
        P0 = R.init_params(m, seed=5, dtype=torch.float64, std=0.3)
        tokens = torch.randint(0, m["vocab_size"], (5, 2 * ga, m["seq_len"] + 1), generator=g)
        tensors = dict(P0)
        tensors["tokens"] = tokens.to(torch.int32)
        out = R.run_model_check({"model": m, "train": t}, tensors, dtype=torch.float64)
        Pm, lrs, norms = manual_train(m, t, P0, tokens)
        tag = f"tie={tie} moe_every={moe_every} ga={ga}"
        close("trainer lr " + tag, out["lr"], torch.tensor(lrs, dtype=torch.float64), 1e-14)
        close("trainer grad_norm " + tag, out["grad_norm"], torch.tensor(norms, dtype=torch.float64))
        report("clipping active " + tag, max(norms) > t["grad_clip"], f"max norm {max(norms):.3f}")
        worst = max(rel(out["param." + n], Pm[n]) for n in Pm)
        report("trainer params vs manual AdamW " + tag, worst <= 1e-9, f"worst rel={worst:.3e}")
    # schedule values
    t = {"lr": 1.0, "min_lr": 0.1, "warmup": 2, "steps": 6}
    got = [R.lr_at(s, t) for s in range(7)]
    want = [0.5, 1.0, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
            0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1]
    report("lr schedule values", all(abs(a - b) < 1e-12 for a, b in zip(got, want)), str(got))


def check_st():
    g = torch.Generator().manual_seed(6)
    d = {"a": torch.randn(3, 4, generator=g), "b": torch.arange(7, dtype=torch.int32),
         "c": torch.randn(1, generator=g), "e": torch.zeros(0, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.safetensors")
        st.write(path, d, {"args": '{"eps": 1e-5}'})
        back, meta = st.read(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
        ok = (set(back) == set(d) and all(torch.equal(back[k], d[k]) and back[k].dtype == d[k].dtype
                                          for k in d) and meta == {"args": '{"eps": 1e-5}'}
              and n % 8 == 0)
    report("safetensors round trip", ok)


def main():
    torch.manual_seed(0)
    check_st()
    check_ties()
    check_naive()
    check_gradcheck()
    check_training()
    if FAILS:
        print(f"\nSELF-CHECK FAILED: {len(FAILS)} check(s): {FAILS}")
        return 1
    print("\nself-check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
