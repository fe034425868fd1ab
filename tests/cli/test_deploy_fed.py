"""Federated modes deployed as processes over gRPC with mutual TLS (`pcmoe launch` with
deploy.mode): fedavg over 3 party processes with the server in party 0's process, and cg-fedllm
(TGAP on public text, FAF) over 2 parties and a separate `pcmoe server` process, both with 4 KiB
chunks, give every round's per-party losses, the final validation losses and the saved
autoencoder of `pcmoe collab` with the same mode and seed, bit for bit. Bytes per direction equal
the simulation's wherever the boundary is the same: a separate server's parties exactly; with
the server in party 0, parties 1.. exactly, and party 0 sends what the others receive and
receives what they send (its own update stays in its process). int8, topk-ef and fedavg-lora
match too. A party with another fed section is refused at join; a killed server stops the
parties, naming it; bad deploy sections are refused with a clear error and a non-zero exit."""
import json
import os
import shutil
import subprocess
import tempfile
import time

from common import PCMOE, check, deploy_config, finish, free_ports, read_metrics, run, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-deploy-fed-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "quiet", "green"]
os.makedirs(os.path.join(data_dir, "three"))  # public text for cg-fedllm's TGAP
for d in range(6):
    with open(os.path.join(data_dir, "three", f"doc{d}.txt"), "w") as f:
        f.write("\n".join(" ".join(words[(d + s * 7 + k * 3) % 10] for k in range(8)) + "." for s in range(40)) + "\n")
FED = {"local_steps": 2, "block_size": 256, "latent_ratio": 64, "tgap_steps": 4, "tgap_blocks": 32, "tgap_epochs": 4,
       "faf_steps": 2, "public_categories": ["three"]}


def fed_config(n, mode, **deploy):
    cfg = deploy_config(data_dir, cache, n, steps=4, join_timeout_s=30, chunk_bytes=4096, mode=mode, **deploy)
    if mode == "cg-fedllm":  # no party may hold the public category
        cfg["parties"] = {"mode": "genre", "n_parties": n, "genres": [["one"], ["two"]]}
    cfg["collab"] = {"modes": [mode]}
    cfg["fed"] = dict(FED)
    return cfg


def simulate_and_deploy(cfg, name):
    path = os.path.join(tmp, name + ".json")
    write_json(path, cfg)
    code, out, err = run("collab", "--config", path, "--out", os.path.join(tmp, name + "-sim"))
    check(code == 0, f"{name}: the simulation runs")
    code, out, err = run("launch", "--config", path, "--out", os.path.join(tmp, name + "-dep"))
    check(code == 0, f"{name}: launch completes")
    if code:
        print(err[-2000:])
        for log in sorted(f for f in os.listdir(os.path.join(tmp, name + "-dep")) if f.endswith(".log")):
            print(log, open(os.path.join(tmp, name + "-dep", log)).read()[-1500:])
        finish()
    print(out)
    mode = cfg["deploy"]["mode"]
    sim = [m for m in read_metrics(os.path.join(tmp, name + "-sim", "metrics.jsonl")) if m["mode"] == mode]
    dep = read_metrics(os.path.join(tmp, name + "-dep", "metrics.jsonl"))
    n = cfg["parties"]["n_parties"]
    check(len(dep) == 2 * n and dep == sim,
          f"{name}: all {len(dep)} per-round per-party lines (loss, ce, lr, grad_norm{', cosine, SNR, FAF' if mode != 'fedavg' else ''}) "
          "identical to the simulation's")
    if dep != sim:
        for a, b in zip(dep, sim):
            print(" deployed", a, "\n simulated", b)
    srep = json.load(open(os.path.join(tmp, name + "-sim", "report.json")))["modes"][mode]
    drep = json.load(open(os.path.join(tmp, name + "-dep", "report.json")))
    for p in range(n):
        r = drep["parties"][p]["report"]
        check(r["val_loss_own"] == srep["parties"][p]["val_loss_own"],
              f"{name} party {p}: final validation loss {r['val_loss_own']:.6f} as simulated")
        check(r["transport"] == "grpc+mtls" and r["rounds"] == 2 and r["memory"] == srep["parties"][p]["memory"],
              f"{name} party {p}: 2 rounds over mutual TLS, planned memory as simulated")
    return srep, drep


tokens = 4 * 4 * 32  # steps x batch x seq_len per party

# (a) fedavg, 3 parties, the server in party 0's process.
srep, drep = simulate_and_deploy(fed_config(3, "fedavg"), "fedavg")
sim_bytes = [(round(p["bytes_sent_per_token"] * tokens), round(p["bytes_received_per_token"] * tokens)) for p in srep["parties"]]
dep = [drep["parties"][p]["report"] for p in range(3)]
for p in (1, 2):
    check(dep[p]["bytes_sent_per_token"] == srep["parties"][p]["bytes_sent_per_token"] and
          dep[p]["bytes_received_per_token"] == srep["parties"][p]["bytes_received_per_token"],
          f"fedavg party {p}: {dep[p]['bytes_sent']} bytes up, {dep[p]['bytes_received']} down, as simulated")
check((dep[0]["bytes_sent"], dep[0]["bytes_received"]) == (sim_bytes[1][1] + sim_bytes[2][1], sim_bytes[1][0] + sim_bytes[2][0]),
      f"fedavg party 0 (hosting the server): sends the other parties' downlinks ({dep[0]['bytes_sent']} B) and receives "
      f"their uplinks ({dep[0]['bytes_received']} B); its own {sim_bytes[0][0]} B up and {sim_bytes[0][1]} B down stay in its process")
check(not any(t["from"] == t["to"] for t in dep[0]["traffic"]), "party 0's calls to itself are not counted")
check(sim_bytes[1][1] // 2 > 4096, f"a round's model ({sim_bytes[1][1] // 2} bytes) travelled in 4 KiB chunks")
check(dep[0]["server"]["rounds"] == 2 and dep[0]["server"]["trainable_floats"] == srep["trainable_floats"],
      "party 0 reports the server's rounds and trainable floats")

# (b) cg-fedllm, 2 parties and a separate server process.
port = free_ports(1)[0]
srep, drep = simulate_and_deploy(fed_config(2, "cg-fedllm", fed_server="separate",
                                            server={"name": "fedserver", "address": f"127.0.0.1:{port}"}), "cg")
for p in range(2):
    r = drep["parties"][p]["report"]
    check(r["bytes_sent_per_token"] == srep["parties"][p]["bytes_sent_per_token"] and
          r["bytes_received_per_token"] == srep["parties"][p]["bytes_received_per_token"],
          f"cg-fedllm party {p}: {r['bytes_sent']} bytes up, {r['bytes_received']} down, as simulated")
    check(r["reconstruction_cosine"] == srep["parties"][p]["reconstruction_cosine"],
          f"cg-fedllm party {p}: reconstruction cosine {r['reconstruction_cosine']:.4f} as simulated")
server = drep["server"]["report"] if "report" in drep.get("server", {}) else {}
check(server.get("bytes_sent") == sum(r["report"]["bytes_received"] for r in drep["parties"]) and
      server.get("bytes_received") == sum(r["report"]["bytes_sent"] for r in drep["parties"]),
      f"the separate server sends what the parties receive and receives what they send ({server.get('bytes_sent')} / "
      f"{server.get('bytes_received')} B)")
untimed = lambda t: {k: v for k, v in t.items() if k != "seconds"}
check(untimed(server.get("tgap", {})) == untimed(srep["tgap"]),
      f"the server's TGAP on public text: the simulation's numbers (held-out MSE {srep['tgap']['held_out_mse_pretrained']:.4f})")
ae = lambda d: open(os.path.join(tmp, d, "cg-fedllm", "autoencoder.safetensors"), "rb").read()
check(ae("cg-dep/server") == ae("cg-sim"), "the server's final autoencoder is the simulation's, byte for byte")

# (c) the other modes, each both ways of placing the server: losses and bytes as simulated.
for mode, placement in (("int8", "separate"), ("topk-ef", "party0"), ("fedavg-lora", "separate")):
    extra = {}
    if placement == "separate":
        extra = {"fed_server": "separate", "server": {"name": "fedserver", "address": f"127.0.0.1:{free_ports(1)[0]}"}}
    srep, drep = simulate_and_deploy(fed_config(2, mode, **extra), mode)
    first = 0 if placement == "separate" else 1  # with the server in party 0, party 0 counts the server's bytes
    check(all(drep["parties"][p]["report"]["bytes_sent_per_token"] == srep["parties"][p]["bytes_sent_per_token"] and
              drep["parties"][p]["report"]["bytes_received_per_token"] == srep["parties"][p]["bytes_received_per_token"]
              for p in range(first, 2)), f"{mode} (server: {placement}): bytes per direction as simulated")

# (d) a party whose fed section differs is refused at join, and its refusal stops the run.
two = fed_config(2, "int8")
other = json.loads(json.dumps(two))
other["fed"]["block_size"] = 128
procs = []
for i, c in enumerate((two, other)):
    c["deploy"]["join_timeout_s"] = 10
    write_json(os.path.join(tmp, f"join{i}.json"), c)
    procs.append(subprocess.Popen([PCMOE, "party", "--config", os.path.join(tmp, f"join{i}.json"), "--party", str(i),
                                   "--insecure", "--out", os.path.join(tmp, f"join{i}")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
errs = [p.communicate(timeout=120)[1] for p in procs]
check(procs[1].returncode != 0 and "party1's config differs from the coordinator's in fed (" in errs[1],
      "party 1 with another fed.block_size is refused at join, naming the fed section")
check(procs[0].returncode != 0 and "party1 stopped the run" in errs[0], "party 0 stops, naming party 1")

# (d') a separate server killed mid-run: the coordinator's watchdog stops both parties, naming it.
live = fed_config(2, "fedavg", fed_server="separate", dead_after_s=1,
                  server={"name": "fedserver", "address": f"127.0.0.1:{free_ports(1)[0]}"})
live["train"]["steps"] = 4000  # 2000 rounds: far more than it gets to
write_json(os.path.join(tmp, "live.json"), live)
server_log = os.path.join(tmp, "live-server.log")
args = lambda *a: [PCMOE, *a, "--config", os.path.join(tmp, "live.json"), "--insecure"]
parties = [subprocess.Popen(args("party", "--party", str(i), "--out", os.path.join(tmp, f"live{i}")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
with open(server_log, "w") as log:
    server = subprocess.Popen(args("server", "--out", os.path.join(tmp, "live-server")), stdout=log, stderr=log)
deadline = time.time() + 60
while "round 3 of 2000" not in open(server_log).read() and server.poll() is None and time.time() < deadline:
    time.sleep(0.05)
server.kill()
server.wait()
errs = [p.communicate(timeout=60)[1] for p in parties]
check(all(p.returncode != 0 and "fedserver (127.0.0.1" in e and "presumed dead" in e for p, e in zip(parties, errs)),
      "a killed server: both parties exit non-zero naming it: " + errs[1].strip().splitlines()[-1][-120:])

# (e) refusals, each with a clear one-line error and a non-zero exit.
base = fed_config(2, "fedavg")


def refused(change, needle, what, *command):
    bad = json.loads(json.dumps(base))
    change(bad)
    path = os.path.join(tmp, "bad.json")
    write_json(path, bad)
    code, _, err = run(*(command or ("certs",)), "--config", path, "--out", os.path.join(tmp, "bad"))
    last = err.strip().splitlines()[-1] if err.strip() else ""
    check(code != 0 and needle in last, what + ": " + last[-220:])


refused(lambda c: c["deploy"].update(mode="fedprox"),
        "'deploy.mode' is 'fedprox': expected pc-moe, fedavg, int8, topk-ef, cg-fedllm or fedavg-lora", "an unknown mode")
refused(lambda c: c["deploy"].update(fed_server="separate"), "give the server process its", "a separate server without an address")
refused(lambda c: c["deploy"].update(fed_server="separate", server={"name": "srv"}), "'deploy.server.address' is missing",
        "a separate server with a name only")
refused(lambda c: c["deploy"].update(server={"name": "srv", "address": "127.0.0.1:1"}), "'deploy.server' is for deploy.fed_server",
        "a server address while the server runs in party 0")
refused(lambda c: c["deploy"].update(fed_server="cloud"), "expected party0 or separate", "an unknown server placement")
refused(lambda c: c["deploy"].update(mode="pc-moe", fed_server="separate", server={"name": "srv", "address": "127.0.0.1:1"}),
        "has no federated server", "a separate server for pc-moe")
refused(lambda c: c["deploy"].update(fed_server="separate", server={"name": "party1", "address": "127.0.0.1:1"}),
        "name 'party1' twice", "a server named like a party")
refused(lambda c: c.update(audit={"observer": 0}), "leakage audit runs in `pcmoe collab` only", "an audit section with a fed mode")
refused(lambda c: c["fed"].update(local_steps=3), "must divide train.steps", "local steps that do not divide the steps")
refused(lambda c: None, "has no separate server", "`pcmoe server` when the server runs in party 0", "server", "--insecure")
refused(lambda c: None, "runs every round in one go", "--until with a federated mode", "launch", "--until", "1")
refused(lambda c: None, "runs every round in one go", "a federated party with --resume", "party", "--party", "1",
        "--insecure", "--resume")

shutil.rmtree(tmp)
finish()
