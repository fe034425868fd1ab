"""Minimal safetensors reader/writer (torch + stdlib only).

Format: 8-byte little-endian header length n, then n bytes of JSON
  {name: {"dtype": "F32"|"I32"|..., "shape": [...], "data_offsets": [begin, end]},
   "__metadata__": {str: str}}
then the raw little-endian tensor data; offsets are relative to the end of the header.
"""
import ctypes
import json
import struct
import sys

import torch

_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "I64": torch.int64,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover
    raise RuntimeError("st.py assumes a little-endian host")


def _tensor_bytes(t):
    t = t.detach().to("cpu").contiguous()
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return b""
    return ctypes.string_at(t.data_ptr(), nbytes)


def read(path):
    """Returns (dict name -> torch tensor, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", blob[:8])
    if 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} exceeds file size {len(blob)}")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", None) or {}
    out = {}
    for name, info in header.items():
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        numel = 1
        for s in shape:
            numel *= s
        esize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * esize or base + end > len(blob) or begin > end:
            raise ValueError(f"{path}: tensor {name!r} has inconsistent offsets {begin},{end} "
                             f"for shape {shape} {info['dtype']}")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            buf = bytearray(blob[base + begin:base + end])
            out[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape).clone()
    return out, meta


def write(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor; metadata: dict str -> str (optional)."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t)
        if t.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {t.dtype}")
        data = _tensor_bytes(t)
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hdr = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hdr += b" " * ((8 - len(hdr) % 8) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)))
        f.write(hdr)
        for c in chunks:
            f.write(c)
