"""Fuzz the C++ histograms (pyfloor._hist) through pyfloor.histograms.

Fills with arbitrary dtypes, shapes, strides and bit patterns (NaN, ±Inf, subnormals, huge),
sparse fills with arbitrary indices, from_dict/unpickle of arbitrary dicts and merges of mismatched
histograms. A successful fill must count exactly what a numpy reference of the binning counts; a
failed one must leave the counts unchanged.

    python tools/fuzz/fuzz_histograms.py [libFuzzer args]     (tools/fuzz.sh runs it under ASan)
"""

from __future__ import annotations

import os
import pickle
import sys

import atheris

sys.path.insert(0, os.path.dirname(__file__))
from _common import expect_error, register_hist

register_hist()
import numpy as np

with atheris.instrument_imports():  # pyfloor only: instrumenting numpy is slow
    import pyfloor.histograms as H

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

I64_MAX = np.iinfo(np.int64).max


def reference_bins(b: H.Binning, x: np.ndarray) -> np.ndarray:
    """Counter index of every float64 value ``x`` under binning ``b`` (the module docstring's layout)."""
    p, lo, hi = b
    z = b.zero
    out = np.empty(x.shape, np.int64)
    a = np.abs(x)
    with np.errstate(invalid="ignore", over="ignore"):
        m, e = np.frexp(np.where(np.isfinite(a), a, 1.0))
    expo = e - 1  # a = (2m)·2^(e-1), 2m in [1, 2)
    j = np.floor((2 * m - 1) * (1 << p)).astype(np.int64)
    k = (expo - lo).astype(np.int64) * (1 << p) + j
    neg = np.signbit(x)
    out[:] = np.where(neg, z - 2 - k, z + 2 + k)
    out[a < 2.0**lo] = np.where(neg, z - 1, z + 1)[a < 2.0**lo]
    out[a == 0] = z
    big = (a >= 2.0**hi) & np.isfinite(a)
    out[big] = np.where(neg, 1, b.nan - 2)[big]
    out[np.isposinf(x)] = b.nan - 1
    out[np.isneginf(x)] = 0
    out[np.isnan(x)] = b.nan
    return out


def binning(fdp: atheris.FuzzedDataProvider, valid: bool) -> tuple[int, int, int]:
    if not valid:
        return (fdp.ConsumeIntInRange(-3, 13), fdp.ConsumeIntInRange(-140, 140), fdp.ConsumeIntInRange(-140, 140))
    p = fdp.ConsumeIntInRange(0, 4)
    lo = fdp.ConsumeIntInRange(-126, 127)
    hi = fdp.ConsumeIntInRange(lo + 1, min(128, lo + 40))
    return p, lo, hi


DTYPES = ["float32", "float16", "bfloat16", "bf16bits", "int16", "float64", "int32", "bool", ">f4", "object"]


def as_float64(arr: object, bf16: bool) -> np.ndarray | None:
    """The float64 values a fill of ``arr`` must count (C order), or None where the fill must be refused."""
    if not isinstance(arr, np.ndarray):
        return None
    if arr.dtype.name == "bfloat16" or (bf16 and arr.dtype in (np.uint16, np.int16)):
        bits = np.ascontiguousarray(arr).view(np.uint16)
        with np.errstate(invalid="ignore"):  # signalling NaNs stay NaN
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if not bf16 and arr.dtype in (np.float32, np.float16):
        return arr.astype(np.float64)
    return None


def values(fdp: atheris.FuzzedDataProvider, n: int, shape: tuple[int, ...] | None = None) -> tuple[object, bool]:
    """An array to fill (any dtype, maybe a strided, reversed or unaligned view) and the bfloat16 flag."""
    kind = fdp.PickValueInList(DTYPES)
    raw = fdp.ConsumeBytes(8 * n)
    raw = raw + b"\0" * (8 * n - len(raw))
    shape = (n,) if shape is None else shape
    if kind == "object":
        arr = np.array([None] * n, dtype=object).reshape(shape)
    elif kind == "bfloat16" and ml_dtypes is not None:
        arr = np.frombuffer(raw[: 2 * n], np.uint16).copy().reshape(shape).view(ml_dtypes.bfloat16)
    else:
        dt = np.dtype("uint16" if kind in ("bfloat16", "bf16bits") else kind)
        arr = np.frombuffer(raw[: dt.itemsize * n], dt).copy().reshape(shape)
    bf16 = kind == "bf16bits" or (kind == "bfloat16" and ml_dtypes is None)
    if fdp.ConsumeBool():  # a strided / reversed / transposed / unaligned view: refused unless C-contiguous
        view = fdp.ConsumeIntInRange(0, 3)
        if view == 0 and arr.ndim >= 1 and arr.shape[-1] > 1:
            arr = arr[..., ::2]
        elif view == 1 and arr.ndim >= 1 and arr.shape[0] > 1:
            arr = arr[::-1]
        elif view == 2 and arr.ndim == 2 and arr.shape[0] > 1 and arr.shape[1] > 1:
            arr = arr.T
        elif view == 3 and arr.dtype.itemsize > 1 and arr.size and arr.dtype != object:
            buf = np.zeros(arr.nbytes + 1, np.uint8)
            buf[1:] = np.frombuffer(arr.tobytes(), np.uint8)
            arr = buf[1:].view(arr.dtype).reshape(arr.shape)  # unaligned
    if fdp.ConsumeIntInRange(0, 7) == 0:
        bf16 = not bf16
    return arr, bf16


def must_refuse(arr: object) -> bool:
    """Whether the layout of ``arr`` must be refused (a fill reads C-contiguous, aligned, native memory)."""
    a = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    return not (a.flags.c_contiguous and a.flags.aligned and a.dtype.isnative)


def check_counts(h) -> None:
    c = h.counts
    assert c.dtype == np.int64 and c.flags.c_contiguous, c.dtype
    assert c.size == 0 or c.min() >= 0, "negative count"


def fuzz_histogram(fdp: atheris.FuzzedDataProvider) -> None:
    try:
        h = H.Histogram(*binning(fdp, fdp.ConsumeIntInRange(0, 7) > 0))
    except Exception as exc:
        expect_error(exc)
        return
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        n = fdp.ConsumeIntInRange(0, 64)
        arr, bf16 = values(fdp, n)
        threads = fdp.PickValueInList([1, 1, 2, 3, 0, -1])
        before = h.counts.copy()
        try:
            h.fill(arr, bfloat16=bf16, threads=threads)
        except Exception as exc:
            expect_error(exc)
            assert np.array_equal(h.counts, before), "a failed fill changed the counts"
            continue
        ref = as_float64(arr, bf16)
        assert ref is not None and not must_refuse(arr) and threads >= 1, ("accepted", arr.dtype, bf16, threads)
        if ref is not None:
            expect = before.copy()
            np.add.at(expect, reference_bins(h.binning, ref.ravel()), 1)
            assert np.array_equal(h.counts, expect), "fill counts differ from the reference binning"
        assert int(h.counts.sum()) == int(before.sum()) + np.asarray(arr).size
    check_counts(h)
    roundtrip(h)
    if h.total - h.counters()["nan"] > 0:
        q = fdp.ConsumeFloat()
        try:
            lo, hi = h.quantile_interval(q)
            assert lo <= h.quantile(q) <= hi or np.isnan(lo)
        except Exception as exc:
            expect_error(exc)


def roundtrip(h) -> None:
    for copy in (pickle.loads(pickle.dumps(h)), type(h).from_dict(h.to_dict()), h.copy()):
        assert copy == h and copy.binning == h.binning


def fuzz_features(fdp: atheris.FuzzedDataProvider) -> None:
    b = binning(fdp, fdp.ConsumeIntInRange(0, 7) > 0)
    m = fdp.ConsumeIntInRange(-1, 16)
    try:
        h = H.FeatureHistograms(m, *b)
    except Exception as exc:
        expect_error(exc)
        return
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        before = h.counts.copy()
        rows, k = fdp.ConsumeIntInRange(0, 8), fdp.ConsumeIntInRange(0, 8)
        threads = fdp.PickValueInList([1, 1, 2, 0])
        if fdp.ConsumeBool():  # sparse
            idx_kind = fdp.PickValueInList(["int32", "int64", "int64", "int16", "uint32", "float32", "list"])
            ints = [
                fdp.ConsumeIntInRange(-2, m + 1) if fdp.ConsumeIntInRange(0, 9) else fdp.ConsumeInt(8)
                for _ in range(rows * k)
            ]
            ishape = fdp.PickValueInList([(rows, k), (rows, k), (rows * k,), (rows, k, 1)])
            if idx_kind == "list":
                idx = np.array(ints, dtype=object).reshape(ishape).tolist()
            else:
                idx = (
                    np.array(ints).astype(idx_kind).reshape(ishape)
                    if idx_kind != "int64"
                    else (
                        np.array(ints, dtype=object).astype(np.int64, casting="unsafe").reshape(ishape)
                        if all(-(2**63) <= v < 2**63 for v in ints)
                        else np.zeros(ishape, np.int64)
                    )
                )
            vshape = fdp.PickValueInList([(rows, k), (rows, k), (rows, k + 1), (k, rows)])
            arr, bf16 = values(fdp, int(np.prod(vshape)), vshape)
            try:
                h.fill(idx, arr, bfloat16=bf16, threads=threads)
            except Exception as exc:
                expect_error(exc)
                assert np.array_equal(h.counts, before), "a failed sparse fill changed the counts"
                continue
            ia = np.asarray(idx)
            assert ia.ndim == 2 and ia.shape == np.asarray(arr).shape, (ia.shape, np.asarray(arr).shape)
            assert ia.size == 0 or (ia.min() >= 0 and ia.max() < m), "an out-of-range index was accepted"
            ref = as_float64(arr, bf16)
            assert ref is not None and not must_refuse(arr) and not must_refuse(ia), ("accepted", arr.dtype, bf16)
            assert ia.dtype in (np.int32, np.int64), ia.dtype
            if ref is not None:
                expect = before.copy()
                np.add.at(expect, (ia.ravel().astype(np.int64), reference_bins(h.binning, ref.ravel())), 1)
                assert np.array_equal(h.counts, expect), "sparse fill differs from the reference"
        else:  # dense
            vshape = fdp.PickValueInList([(rows, m), (rows, m), (rows, m + 1), (m,), (rows, m, 1)])
            arr, bf16 = values(fdp, int(np.prod(vshape)), vshape)
            try:
                h.fill_dense(arr, bfloat16=bf16, threads=threads)
            except Exception as exc:
                expect_error(exc)
                assert np.array_equal(h.counts, before), "a failed dense fill changed the counts"
                continue
            assert np.asarray(arr).ndim == 2 and np.asarray(arr).shape[1] == m
            ref = as_float64(arr, bf16)
            assert ref is not None and not must_refuse(arr), ("accepted", arr.dtype, bf16)
            if ref is not None:
                expect = before.copy()
                cols = np.broadcast_to(np.arange(m), ref.shape)
                np.add.at(expect, (cols.ravel(), reference_bins(h.binning, ref.ravel())), 1)
                assert np.array_equal(h.counts, expect), "dense fill differs from the reference"
    check_counts(h)
    roundtrip(h)


def random_array(fdp: atheris.FuzzedDataProvider):
    kind = fdp.ConsumeIntInRange(0, 6)
    n = fdp.ConsumeIntInRange(0, 3)
    shape = tuple(fdp.PickValueInList([0, 1, 2, 8, 10, 40, 56, 328, 1000000, 10**7, 10**12]) for _ in range(n))
    if kind == 0:
        return fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 4), -(2**63), 2**64 - 1)
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(8)
    if kind == 2:
        return None
    dtype = fdp.PickValueInList(["int64", "int32", "uint64", "uint8", "float64", "bool", "int16"])
    size = int(np.prod(shape, dtype=object)) if shape else 1
    if size > 4096:  # zero-size arrays with huge leading dimensions; or a small array
        shape = shape[:-1] + (0,)
        size = 0
    raw = fdp.ConsumeBytes(size * np.dtype(dtype).itemsize)
    raw += b"\0" * (size * np.dtype(dtype).itemsize - len(raw))
    try:
        return np.frombuffer(raw, dtype).reshape(shape)
    except ValueError:  # a zero-size shape beyond numpy's maximum size
        return np.zeros((10**6, 0), dtype)


def valid_dict(fdp: atheris.FuzzedDataProvider, features: bool) -> dict:
    b = H.Binning(*binning(fdp, True))
    shape = (fdp.ConsumeIntInRange(1, 4), b.n_bins) if features else (b.n_bins,)
    counts = np.zeros(shape, np.int64)
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        counts.flat[fdp.ConsumeIntInRange(0, counts.size - 1)] = fdp.ConsumeIntInRange(-1, I64_MAX)
    d = {"counts": counts, "binning": b.to_array()}
    if fdp.ConsumeBool():
        d[fdp.PickValueInList(["counts", "binning"])] = random_array(fdp)
    if fdp.ConsumeIntInRange(0, 5) == 0:
        d.pop(fdp.PickValueInList(["counts", "binning"]))
    return d


def fuzz_from_dict(fdp: atheris.FuzzedDataProvider) -> None:
    cls = fdp.PickValueInList([H.Histogram, H.FeatureHistograms])
    d = valid_dict(fdp, cls is H.FeatureHistograms) if fdp.ConsumeIntInRange(0, 4) else random_array(fdp)
    how = fdp.ConsumeIntInRange(0, 1)
    try:
        if how == 0:
            h = cls.from_dict(d)
        else:  # unpickle: __setstate__ of an arbitrary state
            h = cls.__new__(cls)
            h.__setstate__(d)
    except Exception as exc:
        expect_error(exc)
        return
    check_counts(h)
    assert np.array_equal(h.counts, np.asarray(d["counts"])), "from_dict changed the counts"
    roundtrip(h)


def fuzz_merge(fdp: atheris.FuzzedDataProvider) -> None:
    feat = fdp.ConsumeBool()
    hs = []
    for _ in range(2):
        b = binning(fdp, True) if fdp.ConsumeIntInRange(0, 3) else (3, -10, 10)
        hs.append(H.FeatureHistograms(fdp.ConsumeIntInRange(1, 3), *b) if feat else H.Histogram(*b))
        arr = np.frombuffer(fdp.ConsumeBytes(16).ljust(16, b"\0"), np.float32).copy()
        if feat:
            hs[-1].fill_dense(np.resize(arr, (4, hs[-1].n_features)))
        else:
            hs[-1].fill(arr)
    a, b = hs
    before = a.counts.copy()
    op = fdp.ConsumeIntInRange(0, 3)
    try:
        if op == 0:
            out = a + b
        elif op == 1:
            a += b
            out = a
        elif op == 2:
            out = a.merge(b, b)
        else:
            a._h.add(b._h)
            out = a
    except Exception as exc:
        expect_error(exc)
        assert np.array_equal(a.counts, before), "a failed merge changed the counts"
        return
    assert a.counts.shape == b.counts.shape and a.binning == b.binning, "mismatched histograms were merged"
    times = 2 if op == 2 else 1
    assert np.array_equal(out.counts, before + times * b.counts)
    check_counts(out)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    [fuzz_histogram, fuzz_features, fuzz_from_dict, fuzz_merge][fdp.ConsumeIntInRange(0, 3)](fdp)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
