"""PC-MoE deployed as separate processes over gRPC with mutual TLS (`pcmoe launch`, `pcmoe party`,
`pcmoe certs`): 4 party processes on loopback reproduce the in-process simulation's per-turn
losses, validation losses and traffic exactly; peers with a certificate of another CA, without
a certificate, with another party's certificate, with another config section or named like a
host are refused with a clear error and a non-zero exit."""
import json
import os
import shutil
import subprocess
import tempfile

from common import PCMOE, check, deploy_config, finish, read_metrics, run, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-deploy-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)


# (a) 4 processes over TLS = the simulation, turn by turn; messages bounded at 8 KiB, so the
# larger expert calls (up to 32 KiB here) travel as streams of 4 KiB chunks.
cfg = deploy_config(data_dir, cache, 4, join_timeout_s=30, chunk_bytes=4096, max_message_bytes=8192)
path = os.path.join(tmp, "four.json")
write_json(path, cfg)
code, out, err = run("collab", "--config", path, "--out", os.path.join(tmp, "sim"))
check(code == 0, "the simulation runs on a config with a deploy section")
code, out, err = run("launch", "--config", path, "--out", os.path.join(tmp, "dep"))
check(code == 0, "launch: 4 party processes over mutual TLS complete, large calls streamed in chunks")
if code:
    print(err[-2000:])
    for p in range(4):
        print(open(os.path.join(tmp, "dep", f"party{p}.log")).read()[-1500:])
    finish()
print(out)
key = lambda m: (m["round"], m["party"])
sim = {key(m): m for m in read_metrics(os.path.join(tmp, "sim", "metrics.jsonl")) if m["mode"] == "pc-moe"}
dep = read_metrics(os.path.join(tmp, "dep", "metrics.jsonl"))
check(len(sim) == 12 and len(dep) == 12, f"12 turns each ({len(sim)}, {len(dep)})")
check([key(m) for m in dep] == list(sim), "the coordinator hands out turns in the simulation's round order")
same = all(all(m[f] == sim[key(m)][f] for f in ("loss", "ce", "lr", "grad_norm")) for m in dep)
check(same, "every turn's loss, cross-entropy, lr and gradient norm are identical to the simulation's")
if not same:
    for m in dep:
        print(key(m), m["loss"], sim[key(m)]["loss"])
srep = json.load(open(os.path.join(tmp, "sim", "report.json")))["modes"]["pc-moe"]["parties"]
drep = json.load(open(os.path.join(tmp, "dep", "report.json")))
for p in range(4):
    r = drep["parties"][p]["report"]
    check(r["val_loss_own"] == srep[p]["val_loss_own"], f"party {p}: validation loss {r['val_loss_own']:.6f} as simulated")
    check(r["bytes_sent_per_token"] == srep[p]["bytes_sent_per_token"] and
          r["bytes_received_per_token"] == srep[p]["bytes_received_per_token"],
          f"party {p}: {r['bytes_sent_per_token']:.1f} + {r['bytes_received_per_token']:.1f} bytes per token, counted as in process")
    check(r["transport"] == "grpc+mtls", f"party {p} ran over mutual TLS")
certs = os.path.join(tmp, "dep", "certs")
check(all(os.path.exists(os.path.join(certs, f)) for f in ("ca.pem", "ca.key", "party0.pem", "party0.key", "party3.pem")),
      "launch made the CA and per-party certificates")
check(oct(os.stat(os.path.join(certs, "party0.key")).st_mode & 0o777) == "0o600", "private keys are 0600")


# (a') bf16 rows on the wire: deployed = simulated (tests/net/test_wire_dtype.cpp holds the bytes).
half = deploy_config(data_dir, cache, 2, join_timeout_s=30)
half["collab"]["wire_dtype"] = "bf16"
hpath = os.path.join(tmp, "half.json")
write_json(hpath, half)
check(run("collab", "--config", hpath, "--out", os.path.join(tmp, "sim16"))[0] == 0, "the simulation runs with bf16 rows")
code, out, err = run("launch", "--config", hpath, "--out", os.path.join(tmp, "dep16"))
check(code == 0, "launch: 2 parties exchanging bf16 rows complete")
sim16 = [m for m in read_metrics(os.path.join(tmp, "sim16", "metrics.jsonl")) if m["mode"] == "pc-moe"]
dep16 = read_metrics(os.path.join(tmp, "dep16", "metrics.jsonl"))
check([(m["round"], m["party"], m["loss"], m["grad_norm"]) for m in dep16] ==
      [(m["round"], m["party"], m["loss"], m["grad_norm"]) for m in sim16] and len(dep16) == 6,
      "bf16: every deployed turn's loss and gradient norm identical to the simulation's")
s16 = json.load(open(os.path.join(tmp, "sim16", "report.json")))["modes"]["pc-moe"]["parties"]
d16 = json.load(open(os.path.join(tmp, "dep16", "report.json")))["parties"]
check(all(d16[p]["report"]["bytes_sent_per_token"] == s16[p]["bytes_sent_per_token"] for p in range(2)),
      "bf16: bytes per token counted as in process")

# (a'') the weights exchange (collab.exchange "weights"): deployed = simulated, in fp32 with every
# expert's weights streamed in 4 KiB chunks and in bf16; in fp32 every turn is also the
# activations exchange's turn (the simulation above with 4 parties is not: 3 parties here).
for dtype in ("fp32", "bf16"):
    w = deploy_config(data_dir, cache, 3, join_timeout_s=30, chunk_bytes=4096, max_message_bytes=8192)
    w["collab"]["wire_dtype"] = dtype
    acts = os.path.join(tmp, f"acts-{dtype}.json")
    write_json(acts, w)
    w["collab"]["exchange"] = "weights"
    wpath = os.path.join(tmp, f"weights-{dtype}.json")
    write_json(wpath, w)
    check(run("collab", "--config", wpath, "--out", os.path.join(tmp, f"simw-{dtype}"))[0] == 0,
          f"the simulation runs the weights exchange ({dtype})")
    code, out, err = run("launch", "--config", wpath, "--out", os.path.join(tmp, f"depw-{dtype}"))
    check(code == 0, f"launch: 3 parties exchanging weights ({dtype}) complete")
    if code:
        print(err[-2000:])
    simw = [m for m in read_metrics(os.path.join(tmp, f"simw-{dtype}", "metrics.jsonl")) if m["mode"] == "pc-moe"]
    depw = read_metrics(os.path.join(tmp, f"depw-{dtype}", "metrics.jsonl"))
    turns = lambda ms: [(m["round"], m["party"], m["loss"], m["grad_norm"]) for m in ms]
    check(turns(depw) == turns(simw) and len(depw) == 9,
          f"weights ({dtype}): every deployed turn's loss and gradient norm identical to the simulation's")
    sw = json.load(open(os.path.join(tmp, f"simw-{dtype}", "report.json")))["modes"]["pc-moe"]
    dw = json.load(open(os.path.join(tmp, f"depw-{dtype}", "report.json")))["parties"]
    check(all(dw[p]["report"]["val_loss_own"] == sw["parties"][p]["val_loss_own"] and
              dw[p]["report"]["bytes_sent_per_token"] == sw["parties"][p]["bytes_sent_per_token"] and
              dw[p]["report"]["exchange"] == "weights" for p in range(3)),
          f"weights ({dtype}): validation losses and bytes per token as simulated")
    kinds = {t["kind"] for t in sw["traffic"]}
    check(kinds == {"expert_weights", "expert_grads", "control"}, f"weights ({dtype}): only {sorted(kinds)} cross")
    if dtype == "fp32":
        check(run("collab", "--config", acts, "--out", os.path.join(tmp, "sima"))[0] == 0, "the activations twin runs")
        sima = [m for m in read_metrics(os.path.join(tmp, "sima", "metrics.jsonl")) if m["mode"] == "pc-moe"]
        check(turns(sima) == turns(simw), "weights (fp32): every turn's loss and gradient norm are the activations exchange's")

# (b) refusals: party 0 (good) against a bad party 1; both must exit non-zero with clear errors.
def pair(cfg0, cfg1, certs0, certs1, name, insecure1=False):
    p0, p1 = os.path.join(tmp, name + "-0.json"), os.path.join(tmp, name + "-1.json")
    write_json(p0, cfg0)
    write_json(p1, cfg1)
    args = lambda c, i, d, ins: [PCMOE, "party", "--config", c, "--party", str(i), "--out", os.path.join(tmp, name, str(i))] + \
        (["--insecure"] if ins else ["--certs", d])
    a = subprocess.Popen(args(p0, 0, certs0, False), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen(args(p1, 1, certs1, insecure1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_b = b.communicate(timeout=120)
    out_a = a.communicate(timeout=120)
    return (a.returncode, out_a[1]), (b.returncode, out_b[1])


two = deploy_config(data_dir, cache, 2, join_timeout_s=4)
good = os.path.join(tmp, "good-certs")
other = os.path.join(tmp, "other-certs")
write_json(os.path.join(tmp, "two.json"), two)
check(run("certs", "--config", os.path.join(tmp, "two.json"), "--out", good)[0] == 0, "certs for two parties")
check(run("certs", "--config", os.path.join(tmp, "two.json"), "--out", other)[0] == 0, "certs of another CA")


def expect(result, needle, what):
    code, err = result
    ok = code != 0 and needle in err
    check(ok, f"{what}: exit {code}, stderr mentions {needle!r}")
    if not ok:
        print("   stderr was:", err.strip()[-800:])


(a0, a1) = pair(two, two, good, other, "ca")
expect(a1, "the TLS handshake failed", "party 1 with a certificate from another CA cannot connect")
expect(a0, "not every party joined within 4 s (deploy.join_timeout_s): waiting for party1",
       "party 0 does not admit it and gives up after join_timeout_s, naming who is missing")
(b0, b1) = pair(two, two, good, good, "plain", insecure1=True)
expect(b1, "a TLS coordinator closes plaintext connections", "party 1 without a certificate (plaintext) is not served")
expect(b0, "waiting for party1", "party 0 does not admit it")
stolen = os.path.join(tmp, "stolen-certs")
shutil.copytree(good, stolen)
for ext in ("pem", "key"):
    shutil.copy(os.path.join(good, "party0." + ext), os.path.join(stolen, "party1." + ext))
(c0, c1) = pair(two, two, good, stolen, "cn")
expect(c1, "certificate's CN is 'party0'", "party 1 presenting party 0's certificate is refused (PERMISSION_DENIED)")
expect(c0, "waiting for party1", "party 0 keeps waiting for the real party 1, then gives up")
# A party whose config differs in any section is refused at join, naming the section; neither
# party writes anything.
for section, key, value in (("train", "lr", 0.02), ("data", "val_fraction", 0.5), ("parties", "seed", 2)):
    changed = json.loads(json.dumps(two))
    changed[section][key] = value
    (d0, d1) = pair(two, changed, good, good, "hash-" + section)
    expect(d1, f"party1's config differs from the coordinator's in {section} (party1 ",
           f"party 1 with another {section}.{key} is refused at join")
    expect(d0, "party1 stopped the run", "party 0 stops, naming party 1")
    outs = [os.path.join(tmp, "hash-" + section, str(i)) for i in range(2)]
    check(all(os.listdir(o) == [] for o in outs), f"{section}: neither party wrote metrics, a report or a checkpoint")

far = json.loads(json.dumps(two))
far["deploy"]["parties"][1]["address"] = "10.1.2.3:5000"
write_json(os.path.join(tmp, "far.json"), far)
code, out, err = run("party", "--config", os.path.join(tmp, "far.json"), "--party", "0", "--insecure", "--out", os.path.join(tmp, "far"))
check(code != 0 and "loopback" in err, "--insecure is refused when a party is not on loopback")
code, out, err = run("launch", "--config", os.path.join(tmp, "far.json"), "--out", os.path.join(tmp, "far"))
check(code != 0 and "run `pcmoe party` on each host" in err, "launch refuses parties on other hosts")
code, out, err = run("party", "--config", os.path.join(tmp, "two.json"), "--party", "1", "--certs", os.path.join(tmp, "nowhere"),
                     "--out", os.path.join(tmp, "x"))
check(code != 0 and "pcmoe certs" in err, "missing certificates: a clear error")
code, out, err = run("party", "--config", os.path.join(tmp, "two.json"), "--party", "2", "--certs", good, "--out", os.path.join(tmp, "x"))
check(code != 0 and "--party must be in [0, 2)" in err, "a party index outside the deployment is refused")
small = json.loads(json.dumps(two))
small["deploy"].update({"chunk_bytes": 8192, "max_message_bytes": 8192})
write_json(os.path.join(tmp, "small.json"), small)
code, out, err = run("certs", "--config", os.path.join(tmp, "small.json"), "--out", os.path.join(tmp, "x"))
check(code != 0 and "'deploy.max_message_bytes' must be at least deploy.chunk_bytes + 1 KiB" in err,
      "a message bound that cannot hold a chunk is refused")
bad = json.loads(json.dumps(two))
bad["deploy"]["parties"][1]["name"] = "Party_1"
write_json(os.path.join(tmp, "bad.json"), bad)
code, out, err = run("certs", "--config", os.path.join(tmp, "bad.json"), "--out", os.path.join(tmp, "x"))
check(code != 0 and "party name 'Party_1'" in err, "an invalid party name is refused")
# A party named "localhost" would have a certificate good for any connection to localhost.
bad["deploy"]["parties"][1]["name"] = "localhost"
write_json(os.path.join(tmp, "bad.json"), bad)
for cmd in (["certs"], ["party", "--party", "1", "--certs", good]):
    code, out, err = run(*cmd, "--config", os.path.join(tmp, "bad.json"), "--out", os.path.join(tmp, "lh"))
    check(code != 0 and err.count("\n") == 1 and "party name 'localhost' is reserved" in err and
          not os.path.exists(os.path.join(tmp, "lh")), f"{cmd[0]}: the party name localhost is refused, nothing written")

# collab.wire_dtype: strict names, fp32 only with DP-SGD, and part of what parties must agree on.
for value, needle in (("fp8", "unknown dtype 'fp8' (expected fp32, bf16 or fp16)"),
                      (16, "collab.wire_dtype")):
    bad = json.loads(json.dumps(two))
    bad["collab"]["wire_dtype"] = value
    write_json(os.path.join(tmp, "bad.json"), bad)
    code, out, err = run("collab", "--config", os.path.join(tmp, "bad.json"), "--out", os.path.join(tmp, "x"))
    check(code != 0 and needle in err, f"collab.wire_dtype {value!r} is refused: {err.strip()[-160:]}")
dp = json.loads(json.dumps(two))
dp["collab"]["wire_dtype"] = "bf16"
dp["privacy"] = {"sampling_rate": 0.1, "noise_multiplier": 1.0}
write_json(os.path.join(tmp, "bad.json"), dp)
code, out, err = run("collab", "--config", os.path.join(tmp, "bad.json"), "--out", os.path.join(tmp, "x"))
check(code != 0 and "collab.wire_dtype must be fp32 with a privacy section" in err, "bf16 with DP-SGD is refused")
half = json.loads(json.dumps(two))
half["collab"]["wire_dtype"] = "bf16"
(e0, e1) = pair(two, half, good, good, "dtype")
expect(e1, "differs from the coordinator's in collab (", "party 1 sending bf16 rows to fp32 peers is refused at join")

shutil.rmtree(tmp)
finish()
