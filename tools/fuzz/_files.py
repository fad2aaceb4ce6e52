"""Input builders shared by the loader targets: a mode byte, then raw file bytes or fuzzed structure."""

from __future__ import annotations

import json
import struct

import numpy as np

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "U64", "U8", "BOOL"]
NP = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "U64": "<u8",
    "U8": "u1",
    "BOOL": "?",
    "BF16": "<u2",
}


def safetensors_bytes(
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]], metadata: dict | None, header_extra: bytes = b""
) -> bytes:
    """A safetensors file written by hand, so that any dtype/shape/offset combination can be made."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset, blobs = 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    h = json.dumps(header).encode() + header_extra
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def fuzzed_tensor(fdp, like: np.ndarray | None) -> tuple[str, tuple[int, ...], bytes]:
    """A tensor near ``like`` (same dtype and shape, maybe changed) with fuzzed contents."""
    choice = fdp.ConsumeIntInRange(0, 5)
    if like is not None and choice < 3:  # same layout, fuzzed or original bytes
        dtype = {v: k for k, v in NP.items()}.get(like.dtype.str, "F64")
        shape = like.shape
    else:
        dtype = fdp.PickValueInList(DTYPES)
        ndim = fdp.ConsumeIntInRange(0, 3)
        shape = tuple(fdp.ConsumeIntInRange(0, 6) for _ in range(ndim))
    n = int(np.prod(shape)) * np.dtype(NP[dtype]).itemsize
    if like is not None and choice == 0 and like.nbytes == n:
        data = like.tobytes()
    elif like is not None and choice == 1 and like.nbytes == n and like.size:  # one element changed
        arr = like.copy().reshape(-1)
        specials = [0, -1, 1, np.nan, np.inf, -np.inf, 1e-310, 1e308, 2**62, -(2**63)]
        v = fdp.PickValueInList(specials)
        try:
            with np.errstate(all="ignore"):
                arr[fdp.ConsumeIntInRange(0, arr.size - 1)] = v
        except (OverflowError, ValueError):
            pass
        data = arr.tobytes()
    else:
        data = fdp.ConsumeBytes(n)
        data += b"\0" * (n - len(data))
    if fdp.ConsumeIntInRange(0, 15) == 0:  # wrong byte count for the shape
        data = data[: max(0, len(data) - fdp.ConsumeIntInRange(1, 8))]
    return dtype, shape, data


def fuzzed_metadata(fdp, base: dict[str, str]) -> dict[str, str] | None:
    meta = dict(base)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        key = fdp.PickValueInList([*base, "version", "format", "config", "fingerprint", "user.x"])
        meta[key] = fdp.PickValueInList(
            ["", "0", "1", "2", "-1", "x", "{}", "[]", "null", "1e999", "9" * 40, fdp.ConsumeUnicodeNoSurrogates(24)]
        )
    if fdp.ConsumeIntInRange(0, 15) == 0:
        return None
    return meta


def fuzzed_file(fdp, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Bytes of a safetensors file derived from ``tensors``/``metadata``: keys dropped or added,
    dtypes, shapes and contents changed, metadata values replaced."""
    out = {}
    for name, arr in tensors.items():
        if fdp.ConsumeIntInRange(0, 11) == 0:
            continue  # dropped
        out[name] = fuzzed_tensor(fdp, arr) if fdp.ConsumeIntInRange(0, 2) == 0 else fuzzed_tensor_same(arr)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        out[fdp.PickValueInList([*tensors, "extra"]) + fdp.PickValueInList(["", "_"])] = fuzzed_tensor(fdp, None)
    return safetensors_bytes(out, fuzzed_metadata(fdp, metadata))


def fuzzed_tensor_same(arr: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    dtype = {v: k for k, v in NP.items()}.get(arr.dtype.str, "F64")
    return dtype, arr.shape, arr.tobytes()


def fuzzed_json(fdp, base: object, depth: int = 0) -> object:
    """``base`` with some values replaced by other JSON values of any type."""
    if fdp.ConsumeIntInRange(0, 5) == 0:
        return fdp.PickValueInList(
            [
                None,
                True,
                False,
                0,
                -1,
                1,
                2.5,
                -0.0,
                1e308,
                2**64,
                10**400,
                "",
                "x",
                [],
                {},
                [1, "a"],
                [[1], [2, 3]],
                float("nan"),
                float("inf"),
                0.5,
                1e-300,
                fdp.ConsumeInt(4),
                fdp.ConsumeFloat(),
                fdp.ConsumeUnicodeNoSurrogates(6),
            ]
        )
    if isinstance(base, dict) and depth < 3:
        out = {k: fuzzed_json(fdp, v, depth + 1) for k, v in base.items() if fdp.ConsumeIntInRange(0, 9)}
        return out
    if isinstance(base, list) and depth < 3 and base:
        out = [fuzzed_json(fdp, v, depth + 1) if fdp.ConsumeIntInRange(0, 3) == 0 else v for v in base]
        if fdp.ConsumeIntInRange(0, 5) == 0:
            out = out[: fdp.ConsumeIntInRange(0, len(out))]
        return out
    return base


def dump_json(obj: object) -> str:
    try:
        return json.dumps(obj)
    except (ValueError, OverflowError):
        return "{}"
