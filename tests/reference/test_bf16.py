"""model.compute_dtype bf16 against the PyTorch reference run on bf16-rounded inputs.

  /usr/bin/python3 tests/reference/test_bf16.py --check build/tests/pcmoe_check [--pcmoe ...]

What bf16 compute means (src/tensor/gemm.h): every product of a projection (attention's q, k,
v, o, the MLPs and experts, the head) takes its two inputs rounded to bf16 (nearest even) and
sums in fp32; in backward the output gradient is rounded too. The router, attention's scores,
norms, softmax and losses stay fp32. The reference (pcmoe_ref.COMPUTE_DTYPE = "bf16") rounds
the same tensors at the same places and sums in float64.

Tolerances, per tensor max|a-b| / max|b|:
* units (swiglu: three linears forward and backward; lm head + CE; an MoE layer): 1e-4, the
  fp32 tests' own. Both sides multiply the very same bf16 values; pcmoe's fp32 sums differ from
  float64 by ~K * 2^-24 relative. An intermediate that is rounded again (act, dy, dg) differs
  between fp32 and float64 by ~1e-7 relative, and flips its bf16 rounding only when it lies
  that close to a rounding midpoint (probability ~2^-16 per value).
* the whole model over 5 AdamW steps: 2e-3. Across layers more intermediates are rounded and a
  flip moves its value by 2^-8 relative; the step-0 gradients and losses are compared at the
  same 2e-3.
Guards show the comparison has teeth: the fp32 (unrounded) reference differs from the bf16 one
by more than 5x the tolerance in each case, so an engine that ignored compute_dtype fails.
"""
import json
import sys

import torch

import common
import pcmoe_ref as R
import test_model as TM

F32 = torch.float32
UNIT_TOL = 1e-4
MODEL_TOL = 2e-3


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


def max_rel(a, b):
    s = b.abs().max().item()
    return (a.double() - b.double()).abs().max().item() / (s if s > 0 else 1.0)


def guard(res, label, ref_fp32, ref_bf16, keys, tol):
    gap = max(max_rel(ref_fp32[k], ref_bf16[k]) for k in keys if ref_bf16[k].is_floating_point())
    res.line(f"{label} [guard: fp32 ref differs from bf16 ref]", gap > 5 * tol, f"max rel {gap:.2e}")


def run_units(res, cmd, work, only):
    for i, (tag, unit, tensors, uargs) in enumerate(unit_cases()):
        if only and only not in tag:
            continue
        ref = reference(lambda: R.run_unit(unit, tensors, uargs, dtype=torch.float64), "bf16")
        exact = R.run_unit(unit, tensors, uargs, dtype=torch.float64)
        guard(res, tag, exact, ref, [k for k in ref if k not in ("aux", "z")], UNIT_TOL)
        fin, fout = work.file(f"unit{i}_in.safetensors"), work.file(f"unit{i}_out.safetensors")
        common.write_in(fin, tensors, dict(uargs, compute_dtype="bf16"))
        ok, log = common.run_harness(cmd, ["unit", unit, fin, fout])
        if not ok:
            res.fail(f"{tag}: pcmoe_check unit {unit}", log)
            continue
        got, _ = common.st.read(fout)
        for k in ref:
            res.compare(f"{tag}: {k}", got.get(k), ref[k], tol=UNIT_TOL)


def run_model(res, cmd, work, only):
    tag, m, t = "model tied moe_every=1 ga=1 renorm=F K2 GQA", TM.base_model(), TM.base_train(threads=2)
    if only and only not in tag:
        return
    m = dict(m, d_model=64, d_ff=64, seq_len=16)
    tensors = TM.make_inputs(m, t, seed=7)
    cfg = {"model": dict(m, compute_dtype="bf16"), "train": t}
    ref = reference(lambda: R.run_model_check(cfg, tensors, dtype=torch.float64), "bf16")
    exact = R.run_model_check(cfg, tensors, dtype=torch.float64)
    guard(res, tag, exact, ref, [k for k in ref if k.startswith(("grad.", "param."))], MODEL_TOL)
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
    for k in ref:
        res.compare(f"{tag}: {k}", got.get(k), ref[k], tol=MODEL_TOL)


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
