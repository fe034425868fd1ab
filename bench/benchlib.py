"""What the benches share: the machine's description and free local ports."""
import os
import socket


def cpu_model():
    """The CPU's model name, as /proc/cpuinfo gives it."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_line():
    """The CPU's model, the number of CPUs and the SIMD extensions the kernels can use."""
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
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
