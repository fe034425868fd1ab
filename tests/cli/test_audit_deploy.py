"""The leakage audit of a deployment: 3 parties as processes over mutual TLS, party 0 the curious
observer. What the observer's process records (the requests it serves and the responses to its
own calls) is byte for byte what the simulation's tap records; the senders' truths, joined by
`pcmoe audit`, equal the simulation's truth.bin; the views the parties save together at each
recorded round's start equal the simulation's; so the audit of the deployment gives the
simulation's attack results exactly. An audited deployment refuses --resume."""
import filecmp
import json
import os
import shutil
import tempfile

from common import check, deploy_config, finish, run, tiny_corpus, write_json

tmp = tempfile.mkdtemp(prefix="pcmoe-audit-deploy-")
data_dir, cache = os.path.join(tmp, "corpus"), os.path.join(tmp, "cache")
tiny_corpus(data_dir)
cfg = deploy_config(data_dir, cache, 3, steps=6, join_timeout_s=30)
cfg["audit"] = {"observer": 0, "record_every": 3}
path = os.path.join(tmp, "cfg.json")
write_json(path, cfg)
sim, dep = os.path.join(tmp, "sim"), os.path.join(tmp, "dep")


def ok(code, err, what):
    check(code == 0, what)
    if code:
        print(err[-3000:])
        finish()


ok(*run("collab", "--config", path, "--out", sim)[::2], "the simulation records")
rec = json.load(open(os.path.join(sim, "report.json")))["modes"]["pc-moe"]["audit_recording"]
check(rec["records"] > 20 and rec["bytes"] > 10000, f"the simulation's observer recorded {rec['records']} payloads, {rec['bytes']} bytes")
ok(*run("launch", "--config", path, "--out", dep)[::2], "the deployment records")
check(filecmp.cmp(os.path.join(sim, "audit", "recording.bin"), os.path.join(dep, "party0", "audit", "recording.bin"),
                  shallow=False), "the observer's process recorded exactly the simulation's tap's bytes")
check(not os.path.exists(os.path.join(dep, "party0", "audit", "sent_truth.bin")) and
      all(os.path.exists(os.path.join(dep, f"party{p}", "audit", "sent_truth.bin")) for p in (1, 2)),
      "the senders, not the observer, keep the truth of what they sent")

code, out, err = run("audit", "--run", dep, "--out", os.path.join(tmp, "dep-audit"), "--public-windows", "16")
ok(code, err, "the audit of the deployment")
check(filecmp.cmp(os.path.join(sim, "audit", "truth.bin"), os.path.join(dep, "audit", "truth.bin"), shallow=False),
      "the joined truths equal the simulation's truth.bin "
      f"({os.path.getsize(os.path.join(dep, 'audit', 'truth.bin'))} bytes)")
views = sorted(v for v in os.listdir(os.path.join(sim, "audit")) if v.startswith("view_r"))
check(views == ["view_r0", "view_r3", "view_r5"] and
      views == sorted(v for v in os.listdir(os.path.join(dep, "audit")) if v.startswith("view_r")), f"views of rounds {views}")
check(all(filecmp.cmp(os.path.join(sim, "audit", v, "model.safetensors"), os.path.join(dep, "audit", v, "model.safetensors"),
                      shallow=False) for v in views), "each view's weights equal the simulation's")
code, out, err = run("audit", "--run", sim, "--out", os.path.join(tmp, "sim-audit"), "--public-windows", "16")
ok(code, err, "the audit of the simulation")
a = json.load(open(os.path.join(tmp, "dep-audit", "audit.json")))
b = json.load(open(os.path.join(tmp, "sim-audit", "audit.json")))
check(len(a["cells"]) > 0 and a["cells"] == b["cells"], f"the {len(a['cells'])} attack results are the simulation's")
check(a["membership"] == [] and len(b["membership"]) > 0,
      "membership inference is left out for the deployment (no party holds a whole model to release)")

code, _, err = run("party", "--config", path, "--party", "1", "--certs", os.path.join(dep, "certs"), "--out",
                   os.path.join(dep, "party1"), "--resume")
check(code != 0 and "cannot be resumed" in err, "an audited deployment refuses --resume")
shutil.rmtree(tmp)
finish()
