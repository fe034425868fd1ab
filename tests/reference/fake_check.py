"""A stand-in for pcmoe_check built from the reference, computing in float32.

  fake_check.py unit NAME IN.safetensors OUT.safetensors
  fake_check.py model CONFIG.json IN.safetensors OUT.safetensors

Used by the tests' --self-test mode to exercise the test plumbing end to end and to show that
an fp32 implementation meets the 1e-4 tolerance against the float64 reference.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import pcmoe_ref as R  # noqa: E402
import st  # noqa: E402


def to_out(d):
    return {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.to(torch.int32))
            for k, v in d.items()}


def main(argv):
    if len(argv) == 4 and argv[0] == "unit":
        tensors, meta = st.read(argv[2])
        args = json.loads(meta.get("args", "{}"))
        out = R.run_unit(argv[1], tensors, args, dtype=torch.float32)
        st.write(argv[3], to_out(out))
        return 0
    if len(argv) == 4 and argv[0] == "model":
        with open(argv[1]) as f:
            cfg = json.load(f)
        tensors, _ = st.read(argv[2])
        out = R.run_model_check(cfg, tensors, dtype=torch.float32)
        st.write(argv[3], to_out(out))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
