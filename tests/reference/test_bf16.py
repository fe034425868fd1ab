"""model.compute_dtype bf16 against the PyTorch reference run on bf16-rounded inputs.

  /usr/bin/python3 tests/reference/test_bf16.py --check build/tests/pcmoe_check [--pcmoe ...]

What bf16 compute means (src/tensor/gemm.h): every product of a projection (attention's q, k,
v, o, the MLPs and experts, the head) takes its two inputs rounded to bf16 (nearest even) and
sums in fp32; in backward the output gradient is rounded too. The router, attention's scores,
norms, softmax and losses stay fp32. The reference (pcmoe_ref.COMPUTE_DTYPE = "bf16") rounds
the same tensors at the same places and sums in float64.

Comparison, per tensor: the norm-wise relative error ||a-b|| / ||b||. Both sides multiply the
very same bf16 values and differ only where an intermediate that is rounded again (act, dy, dg,
a layer's input) came out of fp32 a hair's breadth from a bf16 rounding midpoint and rounded to
the other neighbour: rare (fp32 vs float64 error ~1e-7..1e-6 relative against a bf16 spacing of
2^-8), but each such value moves by 2^-8 relative, so the max-norm error of a tensor can reach
1e-3 while its norm-wise error stays far smaller. Measured (AMD EPYC, oneDNN): up to 3.7e-4
(swiglu dw1: dg is a difference-heavy product whose small elements carry larger fp32 errors,
so they flip more often). Rounding every product input (what bf16 compute does) moves the
norm-wise error by 3.4e-3 to 4.6e-2 here, which the guards check against the unrounded
reference: the tolerance, 1e-3, sits 2.7x above the largest error seen and the gap must clear
3x it.
* units (swiglu: three linears forward and backward; lm head + CE; an MoE layer).
* the whole model (tied head, MoE, GQA): losses of 5 AdamW steps and the step-0 gradients;
  the parameters after 5 steps are not compared (Adam turns a flipped sign of a gradient
  element near zero into a move of lr, as test_model's docstring explains for fp32).
"""
import json
import sys

import torch

import common
import pcmoe_ref as R
import test_model as TM

F32 = torch.float32
TOL = 1e-3


def randn(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(F32)


def unit_cases():
    g = torch.Generator().manual_seed(1717)
    out = []
    # odd sizes: pcmoe pads rows and reductions to its kernels' blocks
    for N, C, Fh in [(37, 48, 80), (64, 64, 128)]:
        t = {"x": randn(g, N, C), "w1": randn(g, Fh, C, scale=0.3), "w3": randn(g, Fh, C, scale=0.3),
             "w2": randn(g, C, Fh, scale=0.3), "dout": randn(g, N, C)}
        out.append((f"swiglu N{N} C{C} F{Fh}", "swiglu", t, {}))
    for N, C, V in [(40, 32, 97), (33, 64, 500)]:
        tgt = torch.randint(0, V, (N,), generator=g)
        t = {"x": randn(g, N, C), "w": randn(g, V, C), "targets": tgt.to(torch.int32)}
        out.append((f"lm_head_ce N{N} C{C} V{V}", "lm_head_ce", t, {}))
    N, C, Fh, E = 64, 32, 48, 8
    t = {"x": randn(g, N, C), "router": randn(g, E, C, scale=0.5), "w1": randn(g, E, Fh, C, scale=0.3),
         "w3": randn(g, E, Fh, C, scale=0.3), "w2": randn(g, E, C, Fh, scale=0.3), "dout": randn(g, N, C)}
    out.append((f"moe N{N} C{C} F{Fh} E{E} K2", "moe", t,
                {"top_k": 2, "renormalize": True, "aux_loss_weight": 0.01, "z_loss_weight": 0.001}))
    return out


def reference(fn, dtype_name):
    R.COMPUTE_DTYPE = dtype_name
    try:
        return fn()
    finally:
        R.COMPUTE_DTYPE = "fp32"


def norm_rel(a, b):
    n = b.double().norm().item()
    return (a.double() - b.double()).norm().item() / (n if n > 0 else 1.0)


def compare(res, label, got, ref):
    if got is None or tuple(got.shape) != tuple(ref.shape) or got.dtype != torch.float32:
        res.compare(label, got, ref)  # reports what is missing or mis-shaped
        return
    r = norm_rel(got, ref)
    res.line(label, r <= TOL, f"norm rel={r:.3e}")


def guard(res, label, ref_fp32, ref_bf16, keys):
    """The compared tensors, as bf16 rounding moves them: the largest gap must clear 3x TOL."""
    gaps = [norm_rel(ref_fp32[k], ref_bf16[k]) for k in keys]
    res.line(f"{label} [guard: fp32 ref differs from bf16 ref]", max(gaps) > 3 * TOL,
             f"norm rel up to {max(gaps):.2e}")


def run_units(res, cmd, work, only):
    for i, (tag, unit, tensors, uargs) in enumerate(unit_cases()):
        if only and only not in tag:
            continue
        ref = reference(lambda: R.run_unit(unit, tensors, uargs, dtype=torch.float64), "bf16")
        exact = R.run_unit(unit, tensors, uargs, dtype=torch.float64)
        guard(res, tag, exact, ref, [k for k in ref if ref[k].is_floating_point() and k not in ("aux", "z")])
        fin, fout = work.file(f"unit{i}_in.safetensors"), work.file(f"unit{i}_out.safetensors")
        common.write_in(fin, tensors, dict(uargs, compute_dtype="bf16"))
        ok, log = common.run_harness(cmd, ["unit", unit, fin, fout])
        if not ok:
            res.fail(f"{tag}: pcmoe_check unit {unit}", log)
            continue
        got, _ = common.st.read(fout)
        for k in ref:
            if ref[k].is_floating_point():
                compare(res, f"{tag}: {k}", got.get(k), ref[k])
            else:
                res.compare(f"{tag}: {k}", got.get(k), ref[k])


def run_model(res, cmd, work, only):
    tag, m, t = "model tied moe_every=1 ga=1 renorm=F K2 GQA", TM.base_model(), TM.base_train(threads=2)
    if only and only not in tag:
        return
    m = dict(m, d_model=64, d_ff=64, seq_len=16)
    tensors = TM.make_inputs(m, t, seed=7)
    cfg = {"model": dict(m, compute_dtype="bf16"), "train": t}
    ref = reference(lambda: R.run_model_check(cfg, tensors, dtype=torch.float64), "bf16")
    exact = R.run_model_check(cfg, tensors, dtype=torch.float64)
    compared = ["loss", "ce"] + [k for k in ref if k.startswith("grad.")]
    guard(res, tag, exact, ref, compared)
    cfg_path = work.file("model_config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    fin, fout = work.file("model_in.safetensors"), work.file("model_out.safetensors")
    common.write_in(fin, tensors)
    ok, log = common.run_harness(cmd, ["model", cfg_path, fin, fout])
    if not ok:
        res.fail(f"{tag}: pcmoe_check model", log)
        return
    got, _ = common.st.read(fout)
    for k in compared:
        compare(res, f"{tag}: {k}", got.get(k), ref[k])


def main():
    args = common.parse_args(__doc__)
    if args.self_test:
        print("test_bf16: no self-test (the float32 stand-in harness has no bf16 mode)")
        return 0
    cmd = common.harness_command(args)
    torch.set_num_threads(1)
    res = common.Results()
    work = common.Workdir(args.keep)
    try:
        run_units(res, cmd, work, args.only)
        run_model(res, cmd, work, args.only)
    finally:
        work.close()
    return res.finish("test_bf16")


if __name__ == "__main__":
    sys.exit(main())
