"""Unit-level comparison of pcmoe (through pcmoe_check) against the PyTorch reference.

  /usr/bin/python3 tests/reference/test_layers.py --check build/tests/pcmoe_check [--pcmoe ...]
  /usr/bin/python3 tests/reference/test_layers.py --self-test     (float32 reference as harness)

For every case: write IN.safetensors (float32 inputs, args in __metadata__), run
`pcmoe_check unit NAME IN OUT`, and compare every output tensor with the float64 reference
computed from the same float32 inputs: max|a-b| / max|b| <= 1e-4 per tensor; expert_idx must
be identical.
"""
import sys

import torch

import common
import pcmoe_ref as R

F32 = torch.float32


def randn(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(F32)


def dyadic(g, lo, hi, *shape):
    """Small integers times 2^-4: products and short sums are exact in fp32."""
    return (torch.randint(lo, hi + 1, shape, generator=g).to(torch.float64) / 16.0).to(F32)


def cases():
    g = torch.Generator().manual_seed(20240501)
    out = []

    # ---- rmsnorm
    for N, C, eps, scale in [(1, 8, 1e-5, 1.0), (6, 16, 1e-6, 3.0), (37, 64, 1e-5, 1.0),
                             (5, 128, 1e-5, 1e-3)]:
        t = {"x": randn(g, N, C, scale=scale), "w": (1.0 + randn(g, C, scale=0.3).double()).float(),
             "dout": randn(g, N, C)}
        out.append((f"rmsnorm N{N} C{C} eps{eps:g} xscale{scale:g}", "rmsnorm", t, {"eps": eps}))

    # ---- rope + causal attention (GQA)
    for B, T, H, KV, D, theta, scale in [(1, 1, 1, 1, 2, 10000.0, 1.0),
                                         (2, 5, 4, 2, 8, 10000.0, 1.0),
                                         (3, 7, 4, 4, 16, 10000.0, 1.0),
                                         (2, 16, 8, 1, 8, 500000.0, 2.0),
                                         (1, 33, 6, 2, 32, 10000.0, 1.0),
                                         (2, 12, 4, 2, 64, 100.0, 0.5),
                                         (2, 150, 4, 2, 16, 10000.0, 1.0)]:  # 3 query blocks
        N = B * T
        t = {"q": randn(g, N, H * D, scale=scale), "k": randn(g, N, KV * D, scale=scale),
             "v": randn(g, N, KV * D), "dout": randn(g, N, H * D)}
        args = {"B": B, "T": T, "H": H, "KV": KV, "rope_theta": theta}
        out.append((f"rope_attention B{B} T{T} H{H} KV{KV} D{D} theta{theta:g}",
                    "rope_attention", t, args))

    # ---- swiglu
    for N, C, Fh in [(1, 4, 8), (19, 32, 48), (64, 64, 128), (5, 16, 40)]:
        t = {"x": randn(g, N, C), "w1": randn(g, Fh, C, scale=0.3), "w3": randn(g, Fh, C, scale=0.3),
             "w2": randn(g, C, Fh, scale=0.3), "dout": randn(g, N, C)}
        out.append((f"swiglu N{N} C{C} F{Fh}", "swiglu", t, {}))

    # ---- moe
    # (K = 1 with renormalize: g = p/p = 1, so the router gradient is only aux + z; those cases
    #  use larger aux/z weights so fp32 cancellation noise of d(p/p)/dp stays far below 1e-4.)
    def moe_case(tag, x, router, E, C, Fh, K, renorm, aw=0.01, zw=0.001, expect=None):
        N = x.shape[0]
        t = {"x": x, "router": router, "w1": randn(g, E, Fh, C, scale=0.3),
             "w3": randn(g, E, Fh, C, scale=0.3), "w2": randn(g, E, C, Fh, scale=0.3),
             "dout": randn(g, N, C)}
        args = {"top_k": K, "renormalize": renorm, "aux_loss_weight": aw, "z_loss_weight": zw}
        out.append((f"moe {tag} N{N} C{C} F{Fh} E{E} K{K} renorm={renorm}", "moe", t, args, expect))

    for N, C, Fh, E, K, renorm, aw, zw in [(16, 16, 24, 4, 1, False, 0.01, 0.001),
                                           (16, 16, 24, 4, 1, True, 0.1, 0.02),
                                           (16, 16, 24, 4, 2, False, 0.01, 0.001),
                                           (16, 16, 24, 4, 2, True, 0.01, 0.001),
                                           (64, 32, 48, 8, 2, True, 0.01, 0.001),
                                           (64, 32, 48, 8, 3, False, 0.3, 0.1),
                                           (7, 8, 8, 3, 3, True, 0.01, 0.001),
                                           (7, 8, 8, 3, 3, False, 0.5, 0.2),
                                           (1, 8, 16, 4, 2, True, 0.01, 0.001)]:
        moe_case("random", randn(g, N, C), randn(g, E, C, scale=0.5), E, C, Fh, K, renorm, aw, zw)

    # an expert that receives no token: positive x, one router row strongly negative
    for K, renorm in [(1, False), (2, True)]:
        N, C, Fh, E = 24, 16, 16, 4
        x = (torch.randn(N, C, generator=g, dtype=torch.float64).abs() + 0.1).to(F32)
        router = randn(g, E, C, scale=0.3)
        router[2] = -1.0
        moe_case("empty-expert2", x, router, E, C, Fh, K, renorm, expect=("empty", 2))

    # exact ties: duplicated dyadic router rows (identical logits in every implementation)
    for E, K, renorm, pairs in [(4, 1, False, [(1, 3)]), (4, 2, True, [(1, 3)]),
                                (4, 2, False, [(0, 2)]), (6, 3, False, [(0, 4), (2, 5)]),
                                (6, 1, True, [(3, 5)])]:
        N, C, Fh = 32, 16, 16
        x = dyadic(g, -8, 8, N, C)
        router = dyadic(g, -3, 3, E, C)
        for a, b in pairs:
            router[a] = dyadic(g, -8, 8, C)   # larger rows: the pair is often on top
            router[b] = router[a]
        moe_case(f"ties{pairs}".replace(" ", ""), x, router, E, C, Fh, K, renorm,
                 aw=0.1 if K == 1 and renorm else 0.01, zw=0.02 if K == 1 and renorm else 0.001,
                 expect=("ties", None))
    # all-zero router: uniform probabilities, every token takes experts 0..K-1
    for E, K, renorm in [(4, 2, False), (8, 3, True), (4, 1, True)]:
        N, C, Fh = 12, 8, 16
        moe_case("zero-router", randn(g, N, C), torch.zeros(E, C), E, C, Fh, K, renorm,
                 aw=0.1, zw=0.01, expect=("first", None))

    # ---- embedding
    for V, C, N in [(11, 8, 40), (97, 16, 8), (5, 3, 1)]:
        tok = torch.randint(0, V, (N,), generator=g)
        tok[0] = V - 1
        if N > 1:
            tok[-1] = 0
        t = {"tokens": tok.to(torch.int32), "wte": randn(g, V, C), "dout": randn(g, N, C)}
        out.append((f"embedding V{V} C{C} N{N}", "embedding", t, {}))

    # ---- lm head + cross-entropy
    for N, C, V, scale in [(6, 8, 11, 1.0), (40, 32, 97, 1.0), (3, 16, 1000, 2.0), (1, 4, 2, 1.0)]:
        tgt = torch.randint(0, V, (N,), generator=g)
        tgt[0] = V - 1
        t = {"x": randn(g, N, C, scale=scale), "w": randn(g, V, C), "targets": tgt.to(torch.int32)}
        out.append((f"lm_head_ce N{N} C{C} V{V}", "lm_head_ce", t, {}))
    return out


def moe_expectations(res, tensors, args, expect, label):
    """Guards that the special MoE cases really exercise what they claim."""
    if expect is None:
        return
    kind, arg = expect
    idx = None
    x, router = tensors["x"].double(), tensors["router"].double()
    p = torch.softmax(x @ router.t(), dim=-1)
    K = int(args["top_k"])
    idx = R.route(p, K)
    if kind == "empty":
        res.line(f"{label} [guard: expert {arg} gets no token]", not (idx == arg).any().item(), "")
    elif kind == "ties":
        sp, _ = torch.sort(p, dim=-1, descending=True, stable=True)
        Kp = min(K + 1, p.shape[1])
        n = int((sp[:, :Kp - 1] == sp[:, 1:Kp]).any(dim=1).sum())
        res.line(f"{label} [guard: tokens with ties in top-(K+1)]", n > 0, f"{n} tokens")
    elif kind == "first":
        ok = torch.equal(idx, torch.arange(K).expand_as(idx))
        res.line(f"{label} [guard: uniform p -> experts 0..K-1]", ok, "")


def main():
    args = common.parse_args(__doc__)
    cmd = common.harness_command(args)
    torch.set_num_threads(1)
    res = common.Results()
    work = common.Workdir(args.keep)
    try:
        for i, case in enumerate(cases()):
            tag, unit, tensors, uargs = case[:4]
            expect = case[4] if len(case) > 4 else None
            if args.only and args.only not in tag:
                continue
            print(f"--- {tag}  args={uargs}")
            ref = R.run_unit(unit, tensors, uargs, dtype=torch.float64)
            if unit == "moe":
                moe_expectations(res, tensors, uargs, expect, tag)
            fin, fout = work.file(f"{i:03d}_{unit}_in.safetensors"), work.file(f"{i:03d}_{unit}_out.safetensors")
            common.write_in(fin, tensors, uargs)
            ok, log = common.run_harness(cmd, ["unit", unit, fin, fout])
            if not ok:
                res.fail(f"{tag}: pcmoe_check unit {unit}", log)
                continue
            try:
                got, _ = common.st.read(fout)
            except Exception as e:  # malformed output file
                res.fail(f"{tag}: reading {fout}", str(e))
                continue
            for name, r in ref.items():
                res.compare(f"  {unit}.{name}", got.get(name), r)
            extra = sorted(set(got) - set(ref))
            if extra:
                print(f"  (note: extra outputs ignored: {extra})")
    finally:
        work.close()
    return res.finish("test_layers")


if __name__ == "__main__":
    sys.exit(main())
