"""`pcmoe memory`: one party of a 4-party PC-MoE, measured in its own process while the other
parties train their turns in another (its host serves them all), needs about (1 - f) + f/4 of
the centralised memory when the experts hold a fraction f of the parameters; its parameter bytes
are exactly its backbone and its own experts; in the weights exchange a party adds one fetched
expert's weights and gradients and stays under 35% of the centralised; in concurrent rounds its
host holds a gradient block and an activation arena per party; bad usage is refused."""
import json
import os
import tempfile

from common import SOURCE, check, finish, run

CONFIG = os.path.join(SOURCE, "configs", "memory.json")


def padded(*shape):
    """Floats a tensor takes in a ParamSet: each tensor starts on a 16-float boundary."""
    n = 1
    for d in shape:
        n *= d
    return (n + 15) // 16 * 16


def param_counts(m, n_parties, party):
    """(backbone floats, floats of the experts `party` hosts), per docs/model.md's parameter list."""
    C, V, H, KV, E = m["d_model"], m["vocab_size"], m["n_heads"], m["n_kv_heads"], m["n_experts"]
    D = C // H
    backbone = padded(V, C) + padded(C) + (0 if m.get("tie_embeddings", True) else padded(V, C))
    experts = 0
    for layer in range(m["n_layers"]):
        backbone += 2 * padded(C) + padded(H * D, C) + 2 * padded(KV * D, C) + padded(C, H * D)
        if (layer + 1) % m.get("moe_every", 1) == 0:
            backbone += padded(E, C)
            experts += sum(2 * padded(m["d_ff"], C) + padded(C, m["d_ff"])
                           for e in range(E) if e % n_parties == party)
        else:
            backbone += 2 * padded(m["d_ff_dense"], C) + padded(C, m["d_ff_dense"])
    return backbone, experts


def measure(n, party=0, config=CONFIG):
    code, out, err = run("memory", "--config", config, "--parties", str(n), "--party", str(party))
    check(code == 0, f"pcmoe memory --parties {n} --party {party} runs")
    if code != 0:
        print("   stderr was:", err.strip()[:500])
        finish()
    return json.loads(out)


model = json.load(open(CONFIG))["model"]
central, four = measure(1), measure(4, party=1)
f = central["expert_fraction"]
floor = (1 - f) + f / 4
ratio = four["arena_bytes"]["total"] / central["arena_bytes"]["total"]
print(f"expert fraction {f:.4f}; n=4 arena ratio {ratio:.4f}, floor {floor:.4f}; "
      f"peak RSS {central['peak_rss_bytes'] / 2**20:.1f} -> {four['peak_rss_bytes'] / 2**20:.1f} MiB")

backbone, all_experts = param_counts(model, 1, 0)
check(central["parameters_total"] == backbone + all_experts, "parameters_total matches the docs/model.md count")
check(abs(f - all_experts / (backbone + all_experts)) < 1e-12, "expert_fraction matches it too")
check(central["arena_bytes"]["parameters"] == 4 * (backbone + all_experts), "the centralised process holds every parameter")
check(f >= 0.95, f"experts hold >= 95% of the parameters ({f:.4f})")
check(ratio <= 0.30, f"a party of 4 needs <= 30% of the centralised arena ({ratio:.4f})")
check(ratio <= floor * 1.10, f"and within 10% of the floor (1-f)+f/4 = {floor:.4f} ({ratio:.4f})")
_, own_experts = param_counts(model, 4, 1)
check(four["arena_bytes"]["parameters"] == 4 * (backbone + own_experts),
      f"party 1 of 4 holds exactly its backbone and its experts ({four['arena_bytes']['parameters']} bytes, "
      f"expected {4 * (backbone + own_experts)})")
check(central["arena_bytes"]["transport"] == 0 and central["bytes_sent"] == central["bytes_received"] == 0,
      "the centralised process sends nothing")
check(four["served_parties"] == [0, 2, 3] and four["bytes_sent"] > 0 and four["bytes_received"] > 0,
      f"party 1's host served the other parties' expert calls ({four['served_parties']})")
check(four["peak_rss_bytes"] < central["peak_rss_bytes"] * 0.5, "a party's peak RSS is well below the centralised")

# The weights exchange: the party runs every expert on fetched weights, one expert at a time.
cfg = json.load(open(CONFIG))
cfg.setdefault("collab", {})["exchange"] = "weights"
for key in ("path", "cache_dir"):
    cfg["data"][key] = os.path.join(SOURCE, cfg["data"][key])
wpath = os.path.join(tempfile.mkdtemp(prefix="pcmoe-memory-"), "weights.json")
json.dump(cfg, open(wpath, "w"))
wts = measure(4, party=1, config=wpath)
wratio = wts["arena_bytes"]["total"] / central["arena_bytes"]["total"]
one_expert = 3 * model["d_ff"] * model["d_model"] * 4
print(f"weights exchange: n=4 arena ratio {wratio:.4f}")
check(wts["exchange"] == "weights" and wratio <= 0.35, f"weights exchange: a party of 4 needs <= 35% ({wratio:.4f})")
check(wts["arena_bytes"]["exchange"] == 2 * one_expert,
      f"it holds one fetched expert's weights and one's gradients ({wts['arena_bytes']['exchange']} bytes)")
check(wts["arena_bytes"]["parameters"] == four["arena_bytes"]["parameters"], "and the same parameters as before")
check(wts["served_parties"] == [0, 2, 3], f"its host handed its weights to every other party ({wts['served_parties']})")

# Concurrent rounds: party 1's host keeps every party's turn apart, so it holds three more
# gradient blocks of its shard and three more copies of its experts' activation arena.
cfg = json.load(open(CONFIG))
cfg.setdefault("collab", {})["schedule"] = "concurrent"
for key in ("path", "cache_dir"):
    cfg["data"][key] = os.path.join(SOURCE, cfg["data"][key])
cpath = os.path.join(os.path.dirname(wpath), "concurrent.json")
json.dump(cfg, open(cpath, "w"))
con = measure(4, party=1, config=cpath)
grads = con["arena_bytes"]["gradients"] - four["arena_bytes"]["gradients"]
acts = con["arena_bytes"]["activations"] - four["arena_bytes"]["activations"]
print(f"concurrent rounds: +{grads / 2**20:.1f} MiB of gradients, +{acts / 2**20:.1f} MiB of activations; "
      f"peak RSS {four['peak_rss_bytes'] / 2**20:.1f} -> {con['peak_rss_bytes'] / 2**20:.1f} MiB")
check(con["schedule"] == "concurrent" and grads == 3 * 4 * own_experts,
      f"concurrent: three more gradient blocks of the party's own experts ({grads} bytes)")
check(acts > 0 and con["arena_bytes"]["host_slots"] == grads + acts,
      f"and three more activation arenas, all named in host_slots ({con['arena_bytes']['host_slots']} bytes)")
check(con["arena_bytes"]["parameters"] == four["arena_bytes"]["parameters"], "the same parameters")


def expect_usage_error(args, needle, what):
    code, _, err = run("memory", *args)
    check(code != 0 and needle in err, f"{what}: exit {code}, stderr mentions {needle!r}")
    if code == 0 or needle not in err:
        print("   stderr was:", err.strip()[:500])


expect_usage_error(["--parties", "4"], "missing --config", "missing --config")
expect_usage_error(["--config", CONFIG, "--parties", "0"], "--parties", "--parties 0")
expect_usage_error(["--config", CONFIG, "--parties", "4", "--party", "4"], "--party", "--party >= n")
expect_usage_error(["--config", CONFIG, "--parties", "17"], "n_experts", "more parties than experts")
expect_usage_error(["--config", os.path.join(SOURCE, "no-such.json"), "--parties", "2"], "cannot open config",
                   "missing config file")
finish()
