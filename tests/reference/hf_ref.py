"""Independent PyTorch forward of Hugging Face's MixtralForCausalLM and OlmoeForCausalLM, in their
own tensor names and config keys, written from the published definitions (Mixtral of Experts,
Jiang et al. 2024; OLMoE, Muennighoff et al. 2024; the config and weight layout of
transformers' modeling_mixtral.py and modeling_olmoe.py). It shares no code with pcmoe or with
pcmoe_ref.py. Also writes random tiny models in the Hugging Face layout: config.json, and
model.safetensors or shards model-0000i-of-0000n.safetensors with model.safetensors.index.json,
in float32 or bfloat16.
"""
import json
import math
import os

import torch

import st


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, theta):
    """x [B, heads, T, D]: Llama-style rotary embedding (the layout Hugging Face checkpoints use)."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1).to(x.dtype)
    return x * emb.cos() + rotate_half(x) * emb.sin()


def attention(c, W, pre, x, olmoe):
    B, T, C = x.shape
    H, KV = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    D = C // H
    q = x @ W[pre + "self_attn.q_proj.weight"].t()
    k = x @ W[pre + "self_attn.k_proj.weight"].t()
    v = x @ W[pre + "self_attn.v_proj.weight"].t()
    if olmoe:  # OLMoE normalises the whole q and k projections before splitting heads
        q = rms_norm(q, W[pre + "self_attn.q_norm.weight"], c["rms_norm_eps"])
        k = rms_norm(k, W[pre + "self_attn.k_norm.weight"], c["rms_norm_eps"])
    q = rope(q.view(B, T, H, D).transpose(1, 2), c["rope_theta"])
    k = rope(k.view(B, T, KV, D).transpose(1, 2), c["rope_theta"])
    v = v.view(B, T, KV, D).transpose(1, 2)
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    p = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    out = (p @ v).transpose(1, 2).reshape(B, T, H * D)
    return out @ W[pre + "self_attn.o_proj.weight"].t()


def sparse_moe(c, W, pre, x, olmoe):
    """Softmax over all experts, the top k, renormalised (Mixtral always; OLMoE if norm_topk_prob)."""
    B, T, C = x.shape
    h = x.reshape(B * T, C)
    block = "mlp." if olmoe else "block_sparse_moe."
    probs = torch.softmax(h @ W[pre + block + "gate.weight"].t(), dim=-1)
    top_w, top_i = torch.topk(probs, c["num_experts_per_tok"], dim=-1)
    if not olmoe or c.get("norm_topk_prob", False):
        top_w = top_w / top_w.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    n_experts = c["num_experts"] if olmoe else c["num_local_experts"]
    names = ("gate_proj", "up_proj", "down_proj") if olmoe else ("w1", "w3", "w2")
    for e in range(n_experts):
        rows, slot = (top_i == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        gate, up, down = (W[f"{pre}{block}experts.{e}.{n}.weight"] for n in names)
        xe = h[rows]
        y = (torch.nn.functional.silu(xe @ gate.t()) * (xe @ up.t())) @ down.t()
        out.index_add_(0, rows, top_w[rows, slot].unsqueeze(1) * y)
    return out.view(B, T, C)


def forward(c, W, tokens):
    """Logits [B, T, V] of tokens [B, T] (float64 throughout)."""
    olmoe = c["architectures"] == ["OlmoeForCausalLM"]
    W = {k: v.to(torch.float64) for k, v in W.items()}
    eps = c["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][tokens.long()]
    for l in range(c["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        x = x + attention(c, W, pre, rms_norm(x, W[pre + "input_layernorm.weight"], eps), olmoe)
        x = x + sparse_moe(c, W, pre, rms_norm(x, W[pre + "post_attention_layernorm.weight"], eps), olmoe)
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return x @ head.t()


def config(arch, V=64, C=32, L=2, H=4, KV=2, F=24, E=4, K=2, T=16, tie=False, renorm=False,
           theta=10000.0, eps=1e-5, aux=0.02):
    c = {"vocab_size": V, "hidden_size": C, "num_hidden_layers": L, "num_attention_heads": H,
         "num_key_value_heads": KV, "intermediate_size": F, "num_experts_per_tok": K,
         "max_position_embeddings": T, "rms_norm_eps": eps, "rope_theta": theta,
         "router_aux_loss_coef": aux, "tie_word_embeddings": tie, "hidden_act": "silu",
         "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
         "output_router_logits": False}
    if arch == "mixtral":
        c.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=E,
                 sliding_window=None)
    else:
        c.update(architectures=["OlmoeForCausalLM"], model_type="olmoe", num_experts=E,
                 norm_topk_prob=renorm, attention_bias=False, clip_qkv=None, rope_scaling=None)
    return c


def random_weights(c, seed):
    """fp32 weights in Hugging Face names: large enough that attention and routing matter."""
    g = torch.Generator().manual_seed(seed)
    olmoe = c["architectures"] == ["OlmoeForCausalLM"]
    V, C, F = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    D = C // H
    E = c["num_experts"] if olmoe else c["num_local_experts"]

    def mat(*shape, std=0.2):
        return torch.randn(*shape, generator=g) * std

    def norm(n):
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    W = {"model.embed_tokens.weight": mat(V, C, std=1.0), "model.norm.weight": norm(C)}
    if not c["tie_word_embeddings"]:
        W["lm_head.weight"] = mat(V, C)
    block = "mlp." if olmoe else "block_sparse_moe."
    names = ("gate_proj", "up_proj", "down_proj") if olmoe else ("w1", "w3", "w2")
    for l in range(c["num_hidden_layers"]):
        pre = f"model.layers.{l}."
        W[pre + "input_layernorm.weight"] = norm(C)
        W[pre + "post_attention_layernorm.weight"] = norm(C)
        W[pre + "self_attn.q_proj.weight"] = mat(H * D, C)
        W[pre + "self_attn.k_proj.weight"] = mat(KV * D, C)
        W[pre + "self_attn.v_proj.weight"] = mat(KV * D, C)
        W[pre + "self_attn.o_proj.weight"] = mat(C, H * D)
        if olmoe:
            W[pre + "self_attn.q_norm.weight"] = norm(H * D)
            W[pre + "self_attn.k_norm.weight"] = norm(KV * D)
        W[pre + block + "gate.weight"] = mat(E, C, std=0.5)
        for e in range(E):
            W[f"{pre}{block}experts.{e}.{names[0]}.weight"] = mat(F, C)
            W[f"{pre}{block}experts.{e}.{names[1]}.weight"] = mat(F, C)
            W[f"{pre}{block}experts.{e}.{names[2]}.weight"] = mat(C, F)
    return W


def write_hf(directory, c, W, dtype=torch.float32, max_shard_bytes=None):
    """Writes the model in the Hugging Face layout; returns the weights as stored (dtype-rounded)."""
    os.makedirs(directory, exist_ok=True)
    stored = {k: v.to(dtype) for k, v in W.items()}
    c = dict(c, torch_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    shards, size = [[]], 0
    for name in sorted(stored):
        n = stored[name].numel() * stored[name].element_size()
        if max_shard_bytes and shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    if len(shards) == 1:
        st.write(os.path.join(directory, "model.safetensors"), stored, {"format": "pt"})
        return stored
    weight_map = {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st.write(os.path.join(directory, file), {n: stored[n] for n in names}, {"format": "pt"})
        weight_map.update({n: file for n in names})
    total = sum(t.numel() * t.element_size() for t in stored.values())
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return stored


def read_hf(directory):
    """(config, weights) of a Hugging Face directory, sharded or not."""
    with open(os.path.join(directory, "config.json")) as f:
        c = json.load(f)
    index = os.path.join(directory, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    W = {}
    for file in files:
        W.update(st.read(os.path.join(directory, file))[0])
    return c, W
