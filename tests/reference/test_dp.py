"""DP-SGD's per-unit clipping (pcmoe_check dp) against the PyTorch reference.

  /usr/bin/python3 tests/reference/test_dp.py --check build/tests/pcmoe_check

The reference computes each privacy unit's gradient on its own: the unit's sequences alone
through pcmoe_ref's model, loss = sum over its sequences of (mean CE + aux_w * L_aux + z_w * L_z)
with the Switch loss of each sequence by itself (aux_loss "per-unit") or no Switch loss ("off"),
in float64 with autograd.  From those it forms the squared norm of each unit's gradient per clip
group (group l: the tensors of layer l, its experts and router included; the last group: the
embedding, final norm and head), the clip factors (flat: min(1, C/(|g_u|+1e-6)); per-layer:
each group against C/sqrt(groups)) and the clipped sum.  pcmoe computes the same from one
batched forward and two backward passes (ghost norms / materialised per-unit gradients, then a
factor-weighted backward).  Compared per tensor with max|a-b|/max|b| <= 1e-5: unit_sq and
clipped.<name> for every tensor.  Guards check that clipping is active for some units and not
for others, and that some expert got no token from some unit.
"""
import json
import math
import sys

import torch

import common
import pcmoe_ref as R


def base_model(**kw):
    m = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
         "d_ff": 32, "d_ff_dense": 48, "n_experts": 4, "top_k": 2, "moe_every": 1,
         "renormalize": False, "tie_embeddings": True, "rope_theta": 10000.0, "norm_eps": 1e-5,
         "aux_loss_weight": 0.05, "z_loss_weight": 0.01, "seq_len": 8}
    m.update(kw)
    return m


def privacy(**kw):
    p = {"sampling_rate": 0.5, "noise_multiplier": 1.0, "clip": 1.0, "aux_loss": "per-unit",
         "clipping": "flat"}
    p.update(kw)
    return p


# (tag, model, privacy, units of the batch's sequences)
CONFIGS = [
    ("tied K2 flat sequence-units", base_model(), privacy(), [0, 1, 2, 3]),
    ("untied moe_every=2 renorm K1 flat document-units",
     base_model(tie_embeddings=False, moe_every=2, renormalize=True, top_k=1), privacy(),
     [0, 0, 1, 2, 2, 2]),
    ("tied K2 E8 per-layer aux-off", base_model(n_experts=8, d_ff=16), privacy(clipping="per-layer", aux_loss="off"),
     [0, 1, 1, 2, 3]),
    ("untied L3 MQA K3 E5 per-layer T16",
     base_model(tie_embeddings=False, n_layers=3, n_heads=2, n_kv_heads=1, n_experts=5, top_k=3,
                seq_len=16, vocab_size=50),
     privacy(clipping="per-layer"), [0, 1, 2]),
]


def group_of(name, n_layers):
    if name.startswith("layers."):
        return int(name.split(".")[1])
    return n_layers


def reference(m, p, params, tokens, units):
    model = R.Model(m, params, dtype=torch.float64)
    named = model.params()
    U = max(units) + 1
    G = m["n_layers"] + 1
    mm = dict(m)
    if p["aux_loss"] == "off":
        mm["aux_loss_weight"] = 0.0
    per_unit, unit_sq = [], torch.zeros(G, U, dtype=torch.float64)
    routes = []
    for u in range(U):
        for q in named.values():
            q.grad = None
        R.ROUTING_LOG = []
        loss = 0
        for b in [i for i, x in enumerate(units) if x == u]:
            seq = tokens[b:b + 1].long()
            l, _, _, _ = R.model_loss(mm, named, seq[:, :-1], seq[:, 1:])
            loss = loss + l
        loss.backward()
        routes.append(R.ROUTING_LOG)
        R.ROUTING_LOG = None
        g = {n: (q.grad.detach().clone() if q.grad is not None else torch.zeros_like(q))
             for n, q in named.items()}
        per_unit.append(g)
        for n, t in g.items():
            unit_sq[group_of(n, m["n_layers"]), u] += (t * t).sum()
    C = float(p["clip"])
    if p["clipping"] == "flat":
        norms = unit_sq.sum(0).sqrt()
        f = torch.clamp(C / (norms + 1e-6), max=1.0).expand(G, U)
    else:
        f = torch.clamp((C / math.sqrt(G)) / (unit_sq.sqrt() + 1e-6), max=1.0)
    out = {"unit_sq": unit_sq}
    for n in named:
        out["clipped." + n] = sum(f[group_of(n, m["n_layers"]), u] * per_unit[u][n] for u in range(U))
    return out, f, routes


def main():
    args = common.parse_args(__doc__)
    cmd = common.harness_command(args)
    torch.set_num_threads(1)
    res = common.Results()
    work = common.Workdir(args.keep)
    any_idle_expert = False
    try:
        for i, (tag, m, p, units) in enumerate(CONFIGS):
            if args.only and args.only not in tag:
                continue
            g = torch.Generator().manual_seed(500 + i)
            params = R.init_params(m, seed=500 + i, dtype=torch.float32)
            for n, t in params.items():
                if t.dim() == 1:
                    params[n] = (1.0 + 0.1 * torch.randn(t.shape, generator=g, dtype=torch.float64)).float()
                elif n.endswith(".router"):
                    params[n] = (0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64)).float()
            B = len(units)
            tokens = torch.randint(0, m["vocab_size"], (B, m["seq_len"] + 1), generator=g).to(torch.int32)
            # A clip between the smallest and the largest unit norm: some units clipped, some not.
            probe, _, _ = reference(m, dict(p, clip=1e9), params, tokens, units)
            G = m["n_layers"] + 1
            norms = probe["unit_sq"].sum(0).sqrt() if p["clipping"] == "flat" else \
                (probe["unit_sq"] * G).sqrt().flatten()
            p = dict(p, clip=float(f"{float(norms.median()):.4g}"))
            ref, f, routes = reference(m, p, params, tokens, units)
            res.line(f"{tag} [guard: some factors < 1, some = 1]",
                     bool((f < 1).any() and (f == 1).any()), f"{int((f < 1).sum())}/{f.numel()} clipped")
            for unit_routes in routes:
                for E, idx in unit_routes:
                    if (torch.bincount(idx.flatten(), minlength=E) == 0).any():
                        any_idle_expert = True
            cfg = {"model": m, "train": {"batch_size": B, "threads": 2}, "privacy": p}
            print(f"=== {tag}\n    config {json.dumps(cfg)}")
            cfg_path = work.file(f"dp{i}_config.json")
            with open(cfg_path, "w") as fh:
                json.dump(cfg, fh, indent=1)
            tensors = dict(params)
            tensors["tokens"] = tokens
            tensors["units"] = torch.tensor(units, dtype=torch.int32)
            fin, fout = work.file(f"dp{i}_in.safetensors"), work.file(f"dp{i}_out.safetensors")
            common.write_in(fin, tensors)
            ok, log = common.run_harness(cmd, ["dp", cfg_path, fin, fout])
            if not ok:
                res.fail(f"{tag}: pcmoe_check dp", log)
                continue
            got, _ = common.st.read(fout)
            for k in ref:
                res.compare(f"  {k}", got.get(k), ref[k], tol=1e-5)
        res.line("[guard: some unit left some expert without a token]", any_idle_expert, "")
    finally:
        work.close()
    return res.finish("test_dp")


if __name__ == "__main__":
    sys.exit(main())
