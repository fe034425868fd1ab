"""Per-party peak memory of PC-MoE against the centralised model: each party's process holds its
backbone and 1/n of the experts, so with experts holding a fraction f of the parameters its
memory should approach the floor ((1 - f) + f / n) x the centralised memory.

    /usr/bin/python3 bench/bench_memory.py [--pcmoe build/pcmoe] [--config configs/memory.json]

Runs `pcmoe memory` (one party in its own process, the other parties in a second one, two rounds
of turns of every party) for n = 1 (centralised: every expert local), 2, 4 and 8. The arena is pcmoe's planned
memory by category; peak RSS is the process's measured high-water mark (the arena plus the
runtime: libraries, thread pools, message buffers). Party 0 is the one measured; for n = 2 and 4
the largest arena over all parties is shown too (party 0 hosts the most experts when n does not
divide n_experts). The last lines are `peak_memory_ratio n=4 arena: X` and `... rss: Y`."""
import argparse
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--pcmoe", default=os.path.join(ROOT, "build", "pcmoe"))
ap.add_argument("--config", default=os.path.join(ROOT, "configs", "memory.json"))
a = ap.parse_args()

CATEGORIES = ["parameters", "gradients", "optimizer", "activations", "scratch", "transport"]
MiB = 2**20


def measure(n, party=0):
    p = subprocess.run([a.pcmoe, "memory", "--config", a.config, "--parties", str(n), "--party", str(party)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pcmoe memory --parties {n} --party {party} failed:\n{p.stderr}")
    return json.loads(p.stdout)


m = json.load(open(a.config))["model"]
rows = {n: measure(n) for n in (1, 2, 4, 8)}
worst = {n: max(measure(n, q)["arena_bytes"]["total"] for q in range(n)) for n in (2, 4)}
central = rows[1]
f = central["expert_fraction"]
print(f"model: d_model {m['d_model']}, {m['n_layers']} layers, {m['n_experts']} experts of d_ff {m['d_ff']} "
      f"top-{m['top_k']}, {central['parameters_total']} parameters, expert fraction f = {f:.4f}")
print(f"{'n':>2} {'arena MiB':>10} " + " ".join(f"{c[:6]:>7}" for c in CATEGORIES) +
      f" {'ratio':>6} {'floor':>6} {'max/party':>9} {'RSS MiB':>8} {'RSS ratio':>9}")
for n, r in rows.items():
    ab = r["arena_bytes"]
    floor = (1 - f) + f / n
    worst_col = f"{worst[n] / central['arena_bytes']['total']:9.4f}" if n in worst else f"{'':9}"
    print(f"{n:2d} {ab['total'] / MiB:10.1f} " + " ".join(f"{ab[c] / MiB:7.1f}" for c in CATEGORIES) +
          f" {ab['total'] / central['arena_bytes']['total']:6.4f} {floor:6.4f} {worst_col}"
          f" {r['peak_rss_bytes'] / MiB:8.1f} {r['peak_rss_bytes'] / central['peak_rss_bytes']:9.4f}")
print("(ratio: party 0's arena / the centralised arena; max/party: the largest party's; "
      "floor: (1-f)+f/n)")
print(f"peak_memory_ratio n=4 arena: {rows[4]['arena_bytes']['total'] / central['arena_bytes']['total']:.4f}")
print(f"peak_memory_ratio n=4 rss: {rows[4]['peak_rss_bytes'] / central['peak_rss_bytes']:.4f}")
