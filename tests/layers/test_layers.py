"""The layer order of src/ (CMakeLists.txt's PCMOE_LAYERS, then cli/): every #include of a
project header names the including file's own folder or one below it; the README's Layout table
lists the folders in that order; and the build itself refuses an include that climbs: a file
including collab/ against train/'s library does not compile, one including train/ and the
folders below it does.
Usage: test_layers.py SOURCE_DIR BUILD_DIR"""
import os
import re
import subprocess
import sys

source, build = sys.argv[1], sys.argv[2]
failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


cmake = open(os.path.join(source, "CMakeLists.txt")).read()
order = re.search(r"set\(PCMOE_LAYERS ([a-z ]+)\)", cmake).group(1).split() + ["cli"]
rank = {name: i for i, name in enumerate(order)}
folders = sorted(d for d in os.listdir(os.path.join(source, "src")) if os.path.isdir(os.path.join(source, "src", d)))
check(sorted(order) == folders, f"every folder of src/ has its place in the order {order} (src/ holds {folders})")

climbs = []
for folder in folders:
    for name in sorted(os.listdir(os.path.join(source, "src", folder))):
        path = os.path.join(source, "src", folder, name)
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            m = re.match(r'\s*#\s*include\s+"([a-z_]+)/', line)
            if m and m.group(1) in rank and rank[m.group(1)] > rank.get(folder, -1):
                climbs.append(f"src/{folder}/{name}:{n} includes {m.group(1)}/")
check(not climbs, "no source file includes a folder above its own" + "".join("\n  " + c for c in climbs))

readme = open(os.path.join(source, "README.md")).read()
layout = readme[readme.index("## Layout"):]
table = re.findall(r"^\| `src/([a-z_]+)/` \|", layout, re.M)
check(table == order, f"the README's Layout table lists {table}, the build's order is {order}")


def build_target(target):
    p = subprocess.run(["cmake", "--build", build, "--target", target], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


code, out = build_target("pcmoe_layer_probe_down")
check(code == 0, "train/'s library reaches train/, privacy/ and common/" + ("" if code == 0 else "\n" + out[-2000:]))
code, out = build_target("pcmoe_layer_probe_up")
check(code != 0 and "collab/transport.h" in out and "No such file" in out,
      "the build refuses train/ an include of collab/ (not found)" + ("" if code else "\n" + out[-2000:]))

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
