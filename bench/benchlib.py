"""What the benches share: the machine's description, free local ports, and the PyTorch peer's
environment and product rate."""
import os
import socket
import subprocess


def cpuinfo(field):
    """The first value of `field` in /proc/cpuinfo (e.g. "model name", "flags"), or None."""
    for line in open("/proc/cpuinfo"):
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model():
    """The CPU's model name, as /proc/cpuinfo gives it."""
    return cpuinfo("model name") or "unknown"


def cpu_flags():
    return (cpuinfo("flags") or "").split()


def cpu_line():
    """The CPU's model, the number of CPUs and the SIMD extensions the kernels can use."""
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {' '.join(simd)}"


def free_ports(n):
    """n TCP ports on 127.0.0.1 that were free a moment ago (bound together, so distinct)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def torch_env(env):
    """`env` for the PyTorch peer, with OpenBLAS's core type set to the CPU's best (SkylakeX
    kernels on AVX-512; otherwise OpenBLAS's own detection), whatever the environment presets:
    a preset Haswell on an AVX-512 machine slows the peer's products (1,503 against 1,873
    tokens/s on bench_moe, AMD EPYC), which would flatter pcmoe. Returns (env, description)."""
    peer = dict(env)
    preset = env.get("OPENBLAS_CORETYPE")
    if "avx512bw" in cpu_flags():
        peer["OPENBLAS_CORETYPE"] = "SkylakeX"
    else:
        peer.pop("OPENBLAS_CORETYPE", None)
    chosen = peer.get("OPENBLAS_CORETYPE", "detected by OpenBLAS")
    note = f"OpenBLAS core type {chosen}" + (f" (the preset {preset} overridden)" if preset and preset != chosen else "")
    return peer, note


def torch_gemm_rate(env, threads):
    """GFLOP/s of PyTorch's fp32 1024^3 product at `threads` threads: the best of five rounds."""
    code = ("import time, torch\n"
            f"torch.set_num_threads({threads})\n"
            "a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)\n"
            "a @ b.t()\n"
            "best = 0\n"
            "for _ in range(5):\n"
            "    t = time.perf_counter()\n"
            "    for _ in range(4): a @ b.t()\n"
            "    best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9)\n"
            "print(best)\n")
    p = subprocess.run(["/usr/bin/python3", "-c", code], env=env, check=True, capture_output=True, text=True)
    return float(p.stdout.strip().splitlines()[-1])
