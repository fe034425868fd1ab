"""LoRA adapters of pcmoe (through `pcmoe_check`) against the PyTorch reference.

  /usr/bin/python3 tests/reference/test_lora.py --check build/tests/pcmoe_check [--pcmoe ...]

An adapted map is y = x W^T + s (x A^T) B^T with W frozen, s = alpha / r (docs/federated.md).
The reference builds it from the plain model of pcmoe_ref.py: every adapted matrix W is replaced
by W + s B A, with A and B autograd leaves, in float64 on the same float32 inputs.
Compared per tensor with max|a-b| / max|b| <= 1e-4:
  * unit lora_linear: y, dx, dA, dB of one map (several shapes, ranks and scales);
  * model: the loss and every adapter gradient of whole models with adapters on the attention
    projections, the routers, the experts and the dense MLPs (tied / untied, moe_every 1 / 2),
    and the merged weights W + s B A the harness exports.
B is random here (not zero as at initialisation) so that dA is not zero.
"""
import json
import sys

import torch

import common
import pcmoe_ref as R

F32 = torch.float32


def randn(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(F32)


def adapted_names(m, targets):
    """Base matrices the targets adapt, in the engine's layout order."""
    out = []
    for name, shape in R.param_shapes(m).items():
        if len(shape) != 2 or not name.startswith("layers."):
            continue
        leaf = name.rsplit(".", 1)[1]
        expert, mlp = ".experts." in name, ".mlp." in name
        if (expert and "experts" in targets) or (mlp and "mlp" in targets) or (not expert and not mlp and leaf in targets):
            out.append(name)
    return out


def lora_linear_ref(t, scale):
    x, a, b = (common_leaf(t[n]) for n in ("x", "a", "b"))
    w = t["w"].double()
    y = x @ w.t() + scale * (x @ a.t()) @ b.t()
    (y * t["dout"].double()).sum().backward()
    return {"out": y.detach(), "dx": x.grad, "da": a.grad, "db": b.grad}


def common_leaf(t):
    return t.detach().double().clone().requires_grad_(True)


def lora_model_ref(m, tensors, names, scale):
    P = {n: tensors[n].double() for n in R.param_shapes(m)}
    leaves = {}
    for n in names:
        a, b = common_leaf(tensors[n + ".lora_a"]), common_leaf(tensors[n + ".lora_b"])
        leaves[n + ".lora_a"], leaves[n + ".lora_b"] = a, b
        P[n] = P[n] + scale * b @ a
    tok = tensors["tokens"].long()
    loss, ce, _, _ = R.model_loss(m, P, tok[:, :-1], tok[:, 1:])
    loss.backward()
    out = {"loss": loss.detach().reshape(1), "ce": ce.detach().reshape(1)}
    for k, v in leaves.items():
        out["grad." + k] = v.grad if v.grad is not None else torch.zeros_like(v)
    for n in names:
        out["merged." + n] = tensors[n].double() + scale * tensors[n + ".lora_b"].double() @ tensors[n + ".lora_a"].double()
    return out


def base_model(**kw):
    m = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "d_ff": 24,
         "d_ff_dense": 40, "n_experts": 4, "top_k": 2, "moe_every": 1, "renormalize": True,
         "tie_embeddings": True, "rope_theta": 10000.0, "norm_eps": 1e-5, "aux_loss_weight": 0.01,
         "z_loss_weight": 0.001, "seq_len": 8}
    m.update(kw)
    return m


MODELS = [
    ("tied moe_every=1 all attention + router + experts r4",
     base_model(), {"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": ["wq", "wk", "wv", "wo", "router", "experts"]}),
    ("untied moe_every=2 q/v + mlp + experts r2 K1",
     base_model(tie_embeddings=False, moe_every=2, top_k=1, n_layers=2),
     {"lora_rank": 2, "lora_alpha": 3.0, "lora_targets": ["wq", "wv", "mlp", "experts"]}),
    ("tied moe_every=1 router only r4 (full rank of a 4 x 32 router)",
     base_model(n_layers=1), {"lora_rank": 4, "lora_alpha": 1.0, "lora_targets": ["router"]}),
]


def main():
    args = common.parse_args(__doc__)
    if args.self_test:
        print("ERROR: test_lora has no --self-test (fake_check.py has no LoRA); pass --check")
        return 2
    cmd = common.harness_command(args)
    torch.set_num_threads(1)
    res = common.Results()
    work = common.Workdir(args.keep)
    g = torch.Generator().manual_seed(20261126)
    try:
        for i, (N, I, O, r, scale) in enumerate([(1, 4, 3, 1, 1.0), (19, 32, 48, 4, 2.0), (64, 128, 8, 8, 0.5),
                                                  (7, 16, 16, 16, 16.0)]):
            t = {"x": randn(g, N, I), "w": randn(g, O, I, scale=0.3), "a": randn(g, r, I, scale=0.3),
                 "b": randn(g, O, r, scale=0.3), "dout": randn(g, N, O)}
            tag = f"lora_linear N{N} in{I} out{O} r{r} s{scale:g}"
            if args.only and args.only not in tag:
                continue
            print("---", tag)
            ref = lora_linear_ref(t, scale)
            fin, fout = work.file(f"lin{i}_in.safetensors"), work.file(f"lin{i}_out.safetensors")
            common.write_in(fin, t, {"scale": scale})
            ok, log = common.run_harness(cmd, ["unit", "lora_linear", fin, fout])
            if not ok:
                res.fail(f"{tag}: pcmoe_check unit lora_linear", log)
                continue
            got, _ = common.st.read(fout)
            for k, v in ref.items():
                res.compare(f"  lora_linear.{k}", got.get(k), v)

        for i, (tag, m, fed) in enumerate(MODELS):
            if args.only and args.only not in tag:
                continue
            print("===", tag)
            scale = fed["lora_alpha"] / fed["lora_rank"]
            names = adapted_names(m, fed["lora_targets"])
            tensors = dict(R.init_params(m, seed=300 + i, dtype=F32))
            for n, p in tensors.items():
                if n.endswith(".router"):
                    tensors[n] = randn(g, *p.shape, scale=0.3)
            shapes = R.param_shapes(m)
            for n in names:
                out_, in_ = shapes[n]
                tensors[n + ".lora_a"] = randn(g, fed["lora_rank"], in_, scale=in_ ** -0.5)
                tensors[n + ".lora_b"] = randn(g, out_, fed["lora_rank"], scale=0.02)
            B = 3
            tensors["tokens"] = torch.randint(0, m["vocab_size"], (B, m["seq_len"] + 1), generator=g).to(torch.int32)
            ref = lora_model_ref(m, tensors, names, scale)
            res.line(f"{tag} [guard: adapters on {len(names)} matrices]", len(names) > 0, "")
            cfg = {"model": m, "train": {"batch_size": B, "threads": 1}, "fed": fed}
            cfg_path = work.file(f"lora{i}_config.json")
            with open(cfg_path, "w") as f:
                json.dump(cfg, f)
            fin, fout = work.file(f"lora{i}_in.safetensors"), work.file(f"lora{i}_out.safetensors")
            common.write_in(fin, tensors)
            ok, log = common.run_harness(cmd, ["lora", cfg_path, fin, fout])
            if not ok:
                res.fail(f"{tag}: pcmoe_check lora", log)
                continue
            got, _ = common.st.read(fout)
            for k, v in ref.items():
                res.compare(f"  {k}", got.get(k), v)
            extra = sorted(set(got) - set(ref))
            res.line(f"{tag} [outputs: exactly the adapters and merged weights]", not extra, f"{len(extra)} extra")
    finally:
        work.close()
    return res.finish("test_lora")


if __name__ == "__main__":
    sys.exit(main())
