"""Shared plumbing of the comparison tests: arguments, running pcmoe_check, comparing tensors.

Every test accepts
  --check PATH     the pcmoe_check harness binary (required unless --self-test)
  --pcmoe PATH     the pcmoe binary (accepted for CTest uniformity)
  --self-test      use fake_check.py (this reference run in float32) as the harness: checks the
                   test plumbing and that an fp32 implementation can meet the tolerance
  --keep DIR       write the IN/OUT files into DIR and keep them (default: a temp dir)
  --only SUBSTR    run only the cases whose tag contains SUBSTR
The reference is evaluated in float64 (exact ground truth); the harness answers in float32.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

import st

TOL = 1e-4
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", help="path to the pcmoe_check binary")
    ap.add_argument("--pcmoe", help="path to the pcmoe binary (unused here)")
    ap.add_argument("--self-test", action="store_true",
                    help="use the float32 reference (fake_check.py) as the harness")
    ap.add_argument("--keep", help="directory to keep the IN/OUT files in")
    ap.add_argument("--only", help="run only cases whose tag contains this substring")
    return ap.parse_args()


def harness_command(args):
    """The command prefix for the harness, or exit(2) with a clear message."""
    if args.self_test:
        return [sys.executable, os.path.join(HERE, "fake_check.py")]
    if not args.check:
        print("ERROR: no harness given: pass --check PATH_TO_pcmoe_check (or --self-test)")
        sys.exit(2)
    if not (os.path.isfile(args.check) and os.access(args.check, os.X_OK)):
        print(f"ERROR: the harness binary {args.check!r} does not exist or is not executable; "
              "build the pcmoe_check target (tests/check/pcmoe_check.cpp) first")
        sys.exit(2)
    return [os.path.abspath(args.check)]


class Workdir:
    def __init__(self, keep):
        self.keep = keep
        if keep:
            os.makedirs(keep, exist_ok=True)
            self.path = keep
        else:
            self.path = tempfile.mkdtemp(prefix="pcmoe_ref_")

    def file(self, name):
        return os.path.join(self.path, name)

    def close(self):
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def run_harness(cmd, argv, timeout=600):
    """Runs the harness; returns (ok, combined output)."""
    # passive OpenMP waiting: busy-spinning threads make runs crawl on a loaded machine
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        p = subprocess.run(cmd + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout}s"
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        return False, f"exit status {p.returncode}\n{out}"
    return True, out


class Results:
    def __init__(self):
        self.n = 0
        self.failed = []

    def line(self, label, ok, detail):
        self.n += 1
        print(f"{label:<58s} {detail:<34s} {'pass' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failed.append(label)

    def fail(self, label, why):
        self.line(label, False, why.strip().splitlines()[0] if why.strip() else "failed")
        if why.strip():
            print("    " + "\n    ".join(why.strip().splitlines()[-30:]))

    def compare(self, label, got, ref, tol=TOL):
        """Per-tensor max|a-b| / max|b|; integer tensors must be equal."""
        if got is None:
            self.line(label, False, "missing from OUT")
            return False
        if tuple(got.shape) != tuple(ref.shape):
            self.line(label, False, f"shape {list(got.shape)} != {list(ref.shape)}")
            return False
        if not ref.is_floating_point():
            if got.dtype != torch.int32:
                self.line(label, False, f"dtype {got.dtype}, want int32")
                return False
            ne = int((got.long() != ref.long()).sum())
            ok = ne == 0
            detail = "exact" if ok else f"{ne}/{ref.numel()} differ"
            if not ok:
                bad = (got.long() != ref.long()).reshape(ref.shape[0], -1).any(dim=1) \
                    .nonzero().flatten()[:5].tolist() if ref.dim() else []
                for r in bad:
                    detail_r = f"    row {r}: got {got[r].tolist()} want {ref[r].tolist()}"
                    print(detail_r)
            self.line(label, ok, detail)
            return ok
        if got.dtype != torch.float32:
            self.line(label, False, f"dtype {got.dtype}, want float32")
            return False
        a, b = got.double(), ref.double()
        if b.numel() == 0:
            self.line(label, True, "empty")
            return True
        if not torch.isfinite(a).all():
            self.line(label, False, f"{int((~torch.isfinite(a)).sum())} non-finite values")
            return False
        diff = (a - b).abs()
        d = diff.max().item()
        s = b.abs().max().item()
        r = d / s if s > 0 else d
        ok = r <= tol
        detail = f"rel={r:.3e}" + ("" if s > 0 else " (abs, ref=0)")
        if not ok:
            flat = int(diff.reshape(-1).argmax())
            pos, rem = [], flat
            for dim in reversed(b.shape):
                pos.insert(0, rem % dim)
                rem //= dim
            detail += (f" at {pos}: got {a.reshape(-1)[flat].item():.6g}"
                       f" want {b.reshape(-1)[flat].item():.6g}")
        self.line(label, ok, detail)
        return ok

    def finish(self, what):
        if self.failed:
            print(f"\n{what}: {len(self.failed)} of {self.n} comparisons FAILED")
            return 1
        print(f"\n{what}: all {self.n} comparisons passed")
        return 0


def write_in(path, tensors, args=None):
    meta = {"args": json.dumps(args)} if args is not None else None
    st.write(path, {k: (v.to(torch.float32) if v.is_floating_point() else v.to(torch.int32))
                    for k, v in tensors.items()}, meta)
