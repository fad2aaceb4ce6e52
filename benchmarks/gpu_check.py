#!/usr/bin/env python3
"""GPU check of the fused SAE encode + statistics kernel: correctness first, then timing, in one run.

Run from the repository root on a machine with CUDA, torch and Triton (nothing else is needed;
pyfloor need not be installed)::

    python benchmarks/gpu_check.py            # checks, config sweep, both shapes (~5 min on an H100)
    python benchmarks/gpu_check.py --quick    # fewer configs and repeats (~3 min)

1. Checks, in parallel worker processes (so that Triton's compiles overlap): every mode × dtype
   against the torch reference (:func:`pyfloor.encode.reference_batch_stats`) on fresh random
   inputs, ragged shapes, with codes. Dyadic inputs (exact in fp32 whatever the summation order)
   must agree exactly; Gaussian inputs to within rounding, counts and top-k indices exactly away
   from boundaries. Outputs are poisoned before each run; every kernel runs twice and must repeat
   itself (a result that moves is a race). The timed configurations are checked too.
2. Ceilings: device-to-device copy bandwidth and a bf16 8192³ matmul.
3. Timing (``triton.testing.do_bench``, median) at the paper's shape (d=1024, m=32768, N=65536,
   k=64) and at d=4096, m=65536: the fused kernels (each swept config; for ReLU the default flat
   kernel and the previous sweep kernel), two torch baselines (bf16 matmul writing N×m, then
   ReLU/top-k and reductions, eager and ``torch.compile``d), pyfloor's torch reference on the GPU
   (fp32 matmul, stable sort), and the bare bf16 matmul. Peak memory of the fused call.

Prints one table last; writes ``gpu_check.json`` to ``$OUT`` when set. ``--cpu-dry-run`` runs the
whole flow at toy sizes on CPU in Triton's interpreter (to test this script without a GPU).
``--offline`` needs no GPU either: it compiles each kernel variant for sm_90 and prints registers,
stack (spill) bytes, shared memory and counts of the SASS instructions that matter.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if "--cpu-dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton, here and in the workers


sys.path.insert(0, str(REPO))  # this checkout's pyfloor (and pyfloor.kernels, a link to kernels/), installed or not

import torch  # noqa: E402

from pyfloor.encode import reference_batch_stats  # noqa: E402
from pyfloor.encode_types import BatchStats, EncodeSpec  # noqa: E402
from pyfloor.kernels import fused_batch_stats  # noqa: E402
from pyfloor.sae import SAE  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
POISON = 0x7F  # int64 0x7F7F…, float32 3.4e38: neither is a valid code


# -- inputs ------------------------------------------------------------------------------------
def make_inputs(
    kind: str,
    n: int,
    d: int,
    m: int,
    mode: str,
    dtype: torch.dtype,
    seed: int,
    device: str,
    w_dtype: torch.dtype | None = None,
):
    """An SAE (weights in ``w_dtype``, default ``dtype``) and activations in ``dtype``. 'dyadic': small
    multiples of powers of two, so every pre-activation is exact in fp32 (and in bf16 products);
    'gauss': continuous values, about 2 % of ReLUs firing."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    act = "jumprelu" if mode == "jumprelu" else "relu"
    sae = SAE(d, m, act)

    def dy(shape, denom, lo, hi):
        return torch.randint(int(lo * denom), int(hi * denom) + 1, shape, generator=g).float() / denom

    with torch.no_grad():
        if kind == "dyadic":
            sae.W_enc.copy_(dy((d, m), 16, -1, 1))
            sae.b_enc.copy_(dy((m,), 4, -40, 8))
            sae.b_dec.copy_(dy((d,), 8, -1, 1))
            x = dy((n, d), 8, -4, 4)
            if sae.threshold is not None:
                sae.threshold.copy_(dy((m,), 4, 0, 4))
        else:
            sae.W_enc.copy_(torch.randn(d, m, generator=g) / d**0.5)
            sae.b_enc.copy_(torch.randn(m, generator=g) * 0.1 - 2.0)
            sae.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
            x = torch.randn(n, d, generator=g)
            if sae.threshold is not None:
                sae.threshold.copy_(torch.rand(m, generator=g) * 0.5)
    return sae.to(device=device, dtype=w_dtype or dtype), x.to(device=device, dtype=dtype)


def multiplied_sae(sae: SAE, x: torch.Tensor) -> SAE:
    """The SAE whose reference the kernel reproduces: for 16-bit x and fp32 weights, W_enc rounded to x's dtype."""
    if x.dtype == torch.float32 or sae.W_enc.dtype != torch.float32:
        return sae
    rounded = copy.deepcopy(sae)
    with torch.no_grad():
        rounded.W_enc.copy_(sae.W_enc.to(x.dtype))
    return rounded


def same_bits(a: BatchStats, b: BatchStats) -> bool:
    """Every statistic and code of two results bit for bit (torch.equal)."""
    same = all(torch.equal(p, q) for p, q in zip(a[:6], b[:6]))
    if a.codes is not None and b.codes is not None:
        same &= all(torch.equal(p, q) for p, q in zip(a.codes, b.codes))
    return bool(same)


def poison(device: str, nbytes: int) -> None:
    """Fill the allocator's free blocks with POISON so that unwritten outputs show."""
    if device == "cuda":
        block = torch.full((nbytes,), POISON, dtype=torch.uint8, device=device)
        del block


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def compare(got, ref, sae: SAE, x: torch.Tensor, mode: str, k: int | None, exact: bool) -> dict[str, Any]:
    """Errors of a kernel result against the reference; ``ok`` says whether it passes."""
    out: dict[str, Any] = {}
    out["sum_err"] = _err(got.act_sum, ref.act_sum)
    out["sq_err"] = _err(got.act_sq_sum, ref.act_sq_sum)
    out["max_err"] = _err(got.act_max, ref.act_max)
    out["count_diff"] = int((got.fire_count - ref.fire_count).abs().sum())
    out["nonfinite"] = (int(got.n_nonfinite), int(ref.n_nonfinite))
    finite = all(torch.isfinite(t).all() for t in (got.act_sum, got.act_sq_sum, got.act_max))
    ok = finite and out["nonfinite"][0] == out["nonfinite"][1]
    if exact:
        ok &= out["count_diff"] == 0 and bool(torch.equal(got.act_max, ref.act_max))
        ok &= out["sum_err"] < 1e-6 and out["sq_err"] < 1e-6
    else:
        # counts may flip only where the float64 pre-activation sits within rounding of a boundary
        with torch.no_grad():
            finite_rows = torch.isfinite(x).all(dim=-1, keepdim=True)
            pre = sae.pre_activations(torch.where(finite_rows, x, 0).double())
            eps = 1e-4 * float(pre.square().mean().sqrt())
            edge = pre.abs() < eps
            if mode == "jumprelu":
                edge |= (pre - sae.threshold.double()).abs() < eps
            if mode == "topk":
                top = pre.sort(dim=1, descending=True).values
                rows_ambiguous = ((top[:, k - 1] - top[:, k]).abs() < eps) | (top[:, k - 1].abs() < eps)
                out["ambiguous_rows"] = int(rows_ambiguous.sum())
                allowed = 2 * k * out["ambiguous_rows"]
            else:
                allowed = int(edge.sum())
        out["count_allowed"] = allowed
        ok &= out["count_diff"] <= allowed and out["sum_err"] < 1e-5 and out["sq_err"] < 1e-5 and out["max_err"] < 1e-5
    if ref.codes is not None:
        gc, rc = got.codes, ref.codes
        poisoned = (gc.indices == int.from_bytes(bytes([POISON]) * 8, "little", signed=True)).any()
        poisoned |= (gc.values.view(torch.int32) == int.from_bytes(bytes([POISON]) * 4, "little", signed=True)).any()
        out["codes_written"] = not bool(poisoned) and bool(torch.isfinite(gc.values).all())
        ok &= out["codes_written"]
        if mode == "topk":
            gi, gv = gc.rows(k)
            ri, rv = rc.rows(k)
            same = (gi == ri).all(dim=1)
            if not exact:
                same |= rows_ambiguous
            out["codes_rows_differing"] = int((~same).sum())
            out["codes_val_err"] = _err(gv, rv)
            ok &= out["codes_rows_differing"] == 0 and out["codes_val_err"] < (0 if exact else 1e-5) + 1e-12
        elif exact:
            out["codes_equal"] = all(torch.equal(a, b) for a, b in zip(gc, rc))
            ok &= out["codes_equal"]
        else:
            out["nnz"] = (int(gc.indices.numel()), int(rc.indices.numel()))
            ok &= abs(out["nnz"][0] - out["nnz"][1]) <= allowed
    out["ok"] = bool(ok)
    return out


def check_task(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one group of checks (one worker): each case twice against the reference.

    Repeats must agree bit for bit (``torch.equal`` on every statistic and code), except with
    ``reduction="atomic"``, whose float sums are added in arrival order (recorded, not required).
    """
    device = task["device"]
    results = []
    for case in task["cases"]:
        rec = {k: v for k, v in case.items() if k != "options"} | {"options": case.get("options", {})}
        try:
            sae, x = make_inputs(
                case["kind"],
                case["n"],
                case["d"],
                case["m"],
                case["mode"],
                DTYPES[case["dtype"]],
                case["seed"],
                device,
                DTYPES[case["w_dtype"]] if "w_dtype" in case else None,
            )
            if case.get("nonfinite"):
                x[:: max(1, case["n"] // 5), 3] = float("nan")
                x[1, 0] = float("inf")
            k = case.get("k")
            runs = []
            for _ in range(2):
                poison(device, 1 << 28)
                runs.append(
                    fused_batch_stats(x, sae, case["mode"], k, want_codes=case["codes"], **case.get("options", {}))
                )
            if device == "cuda":
                torch.cuda.synchronize()
            a, b = runs
            rec["repeatable"] = same_bits(a, b)
            ref_sae = multiplied_sae(sae, x)
            ref = reference_batch_stats(
                x, ref_sae, EncodeSpec.resolve(ref_sae, case["mode"], k), want_codes=case["codes"]
            )
            rec |= compare(a, ref, ref_sae, x, case["mode"], k, exact=case["kind"] == "dyadic")
            atomic = case.get("options", {}).get("reduction") == "atomic"
            rec["ok"] = rec["ok"] and (rec["repeatable"] or atomic)
        except Exception:  # a crash is a failed check, reported with the rest
            rec |= {"ok": False, "error": traceback.format_exc(limit=6)}
        results.append(rec)
    return results


# -- timing ------------------------------------------------------------------------------------
def measure_ms(fn: Callable[[], Any], device: str, quick: bool, slow: bool = False) -> float:
    """Median milliseconds of ``fn``: do_bench for fast calls, a few event-timed calls for slow ones."""
    if device != "cuda":
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    if slow:
        fn()
        times = []
        for _ in range(2 if quick else 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25 if quick else 100, rep=100 if quick else 500, return_mode="median"))


def _chunk_stats(xc: torch.Tensor, w: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, mode: str, k: int | None):
    """Fire counts, Σz, Σz² and max of one chunk of tokens, the usual torch way: a bf16 GEMM writing
    tokens × latents, then ReLU/top-k and reductions."""
    pre = torch.addmm(b_enc, xc - b_dec, w)
    m = w.shape[1]
    if mode == "topk":
        val, idx = pre.topk(k, dim=1)
        z = val.float().clamp_min(0).flatten()
        idx = idx.flatten()
        fire = torch.zeros(m, dtype=torch.int64, device=xc.device).index_add_(0, idx, (z > 0).long())
        s1 = torch.zeros(m, dtype=torch.float64, device=xc.device).index_add_(0, idx, z.double())
        s2 = torch.zeros(m, dtype=torch.float64, device=xc.device).index_add_(0, idx, z.double().square())
        mx = torch.zeros(m, dtype=torch.float32, device=xc.device).scatter_reduce_(0, idx, z, "amax")
        return fire, s1, s2, mx
    z = torch.relu(pre)
    return (
        (z > 0).sum(0),
        z.sum(0, dtype=torch.float32).double(),
        (z * z).sum(0, dtype=torch.float32).double(),
        z.amax(0).float(),
    )


_COMPILED: dict[str, Callable[..., Any]] = {}


def eager_stats(x: torch.Tensor, sae: SAE, mode: str, k: int | None, chunk: int = 16384, compiled: bool = False):
    """The torch baselines: :func:`_chunk_stats` over chunks of 16,384 tokens, eager or ``torch.compile``d."""
    step = _chunk_stats
    if compiled:
        step = _COMPILED.setdefault(mode, torch.compile(_chunk_stats, dynamic=False))
    fire, s1, s2, mx, *_ = BatchStats.zeros(sae.n_latents, x.device)
    with torch.no_grad():
        for c in range(0, x.shape[0], chunk):
            f, a, b, top = step(x[c : c + chunk], sae.W_enc, sae.b_enc, sae.b_dec, mode, k)
            fire += f
            s1 += a
            s2 += b
            mx = torch.maximum(mx, top)
    return fire, s1, s2, mx


def ceilings(device: str, quick: bool) -> dict[str, float]:
    """Measured copy bandwidth (bytes read + written) and bf16 matmul rate on random data."""
    if device != "cuda":
        return {}
    a = torch.empty(1 << 31, dtype=torch.uint8, device=device).random_()
    b = torch.empty_like(a)
    t = measure_ms(lambda: b.copy_(a), device, quick)
    del a, b
    p = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    q = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    tm = measure_ms(lambda: p @ q, device, quick)
    return {"copy_TBps": 2 * (1 << 31) / t / 1e9, "bf16_matmul_TFLOPs": 2 * 8192**3 / tm / 1e9}


def _attempt(fn: Callable[[], float], errors: list[str], what: str) -> float | None:
    """``fn()``, or None with the error noted (one failing variant must not stop the run)."""
    try:
        return fn()
    except Exception as exc:
        errors.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
        print("ERROR", errors[-1], flush=True)
        return None


def bench_shape(
    shape: dict[str, int], configs: dict[str, list[dict]], device: str, args, deadline: float
) -> list[dict]:
    """Fused (every config), eager, reference and bare-matmul times at one shape, bf16."""
    n, d, m, k = shape["n"], shape["d"], shape["m"], shape["k"]
    sae, x = make_inputs("gauss", n, d, m, "relu", torch.bfloat16, int.from_bytes(os.urandom(4), "little"), device)
    flop = 2 * n * d * m
    rows = []
    errors: list[str] = []
    t_mm = _attempt(lambda: measure_ms(lambda: torch.matmul(x, sae.W_enc), device, args.quick), errors, "matmul")
    for mode in ("relu", "topk"):
        kk = k if mode == "topk" else None
        row: dict[str, Any] = {"shape": f"d={d} m={m} N={n}", "mode": f"topk{k}" if kk else mode, "matmul_ms": t_mm}
        fused = {}
        for opts in configs[mode]:
            name = json.dumps(opts, sort_keys=True)
            t = _attempt(
                lambda: measure_ms(lambda: fused_batch_stats(x, sae, mode, kk, **opts), device, args.quick),
                errors,
                f"{mode} {name}",
            )
            if t is not None:
                fused[name] = t
        # the best of the reproducible configs; the first atomic one is timed beside the first (default) one
        atomic = [c for c in fused if json.loads(c).get("reduction") == "atomic"]
        sweep = [c for c in fused if json.loads(c).get("kernel") == "sweep"]  # the previous kernel, timed beside
        best = min((c for c in fused if c not in atomic and c not in sweep), key=fused.get, default=None)
        row |= {"fused_ms": fused.get(best), "fused_config": best, "fused_all_ms": fused}
        row["default_ms"] = fused.get(json.dumps(configs[mode][0], sort_keys=True))
        row["atomic_ms"] = fused[atomic[0]] if atomic else None
        fp32_w = sae.float()  # bf16 activations with fp32 weights: W_enc rounded to bf16 on every call
        row["fp32_weights_ms"] = _attempt(
            lambda: measure_ms(lambda: fused_batch_stats(x, fp32_w, mode, kk), device, args.quick),
            errors,
            f"{mode} fp32 weights",
        )
        del fp32_w
        if best is not None and mode == "topk" and not args.quick:
            opts = json.loads(best)
            row["fused_codes_ms"] = _attempt(
                lambda: measure_ms(
                    lambda: fused_batch_stats(x, sae, mode, kk, want_codes=True, **opts), device, args.quick
                ),
                errors,
                "topk codes",
            )
        if best is not None and device == "cuda":  # peak memory of one fused call beyond what is allocated
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fused_batch_stats(x, sae, mode, kk, **json.loads(best))
            torch.cuda.synchronize()
            row["fused_peak_extra_MB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            row["dense_pre_MB"] = n * m * 2 / 2**20
        row["sweep_ms"] = fused[sweep[0]] if sweep else None
        row["eager_ms"] = _attempt(
            lambda: measure_ms(lambda: eager_stats(x, sae, mode, kk), device, args.quick, slow=True),
            errors,
            f"eager {mode}",
        )
        row["compiled_ms"] = _attempt(
            lambda: measure_ms(lambda: eager_stats(x, sae, mode, kk, compiled=True), device, args.quick, slow=True),
            errors,
            f"torch.compile {mode}",
        )
        row["reference_ms"] = None  # skipped past the time budget (and at the large shape with --quick)
        if time.time() < deadline and not (args.quick and d > 2048):
            spec = EncodeSpec.resolve(sae, mode, kk)
            row["reference_ms"] = _attempt(
                lambda: measure_ms(lambda: reference_batch_stats(x, sae, spec), device, args.quick, slow=True),
                errors,
                f"reference {mode}",
            )
        row["fused_TFLOPs"] = flop / row["fused_ms"] / 1e9 if row["fused_ms"] else None
        row["matmul_TFLOPs"] = flop / t_mm / 1e9 if t_mm else None
        row["errors"] = list(errors)
        errors.clear()
        rows.append(row)
        print(json.dumps(row), flush=True)
    del x, sae
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def floors(shape: dict[str, int]) -> dict[str, float]:
    """FLOP and minimal-byte floors in ms on an H100 SXM / H200 (datasheet: 990 TFLOP/s bf16 dense; 3.35 / 4.8 TB/s)."""
    n, d, m = shape["n"], shape["d"], shape["m"]
    flop = 2 * n * d * m
    nbytes = 2 * (n * d + d * m) + m * 28
    return {
        "flop_ms": flop / 990e12 * 1e3,
        "bytes_ms_h100": nbytes / 3.35e12 * 1e3,
        "bytes_ms_h200": nbytes / 4.8e12 * 1e3,
    }


# -- plan --------------------------------------------------------------------------------------
def plan(args, device: str) -> tuple[list[dict], list[dict], dict[str, list[dict]]]:
    """Check tasks (one per worker), timing shapes and fused configs to sweep."""
    seed = int.from_bytes(os.urandom(4), "little")
    if args.cpu_dry_run:
        small = dict(block_n=16, block_m=32, block_k=16)
        atomic = small | {"reduction": "atomic"}
        configs = {
            "relu": [small, atomic, small | {"kernel": "sweep"}],
            "topk": [small, atomic, small | {"kernel": "sweep"}],
        }
        shapes = [dict(n=64, d=48, m=96, k=8)]
        ragged = [dict(n=67, d=37, m=101)]
        check_div16 = dict(n=64, d=48, m=96)
        ks = {"topk": [8]}
    else:
        atomic = {"reduction": "atomic"}
        configs = {
            "relu": [
                {},
                atomic,
                {"kernel": "sweep"},
                {"num_programs": 132},
                {"block_m": 256},
                {"block_n": 256},
                {"num_stages": 4},
                {"block_n": 64, "num_warps": 4},
            ],
            "topk": [
                {},
                atomic,
                {"kernel": "sweep"},
                {"block_m": 128},
                {"compact_rows": 16},
                {"block_n": 64, "num_warps": 4},
            ],
        }
        if args.quick:
            configs = {"relu": configs["relu"][:3], "topk": configs["topk"][:3]}
        shapes = [dict(n=65536, d=1024, m=32768, k=64), dict(n=65536, d=4096, m=65536, k=64)]
        ragged = [dict(n=4099, d=1040, m=5008), dict(n=1031, d=997, m=4999)]  # d % 16 == 0 (fast path), and not
        check_div16 = dict(n=2048, d=1024, m=4096)  # same specialisation as the timed shapes
        ks = {"topk": [64, 128, 256, 1]}
        if args.quick:
            ragged, ks = ragged[:1], {"topk": [64]}
    tasks = []
    for dtype in DTYPES:
        for mode in ("relu", "jumprelu", "topk"):
            cases = []
            for i, shape in enumerate(ragged):
                mode_ks = ks.get(mode, [None])
                for kind in ("dyadic", "gauss"):
                    for k in mode_ks if i == 0 else mode_ks[:1]:  # every k on the first shape
                        cases.append(
                            dict(
                                kind=kind,
                                mode=mode,
                                k=k,
                                dtype=dtype,
                                codes=True,
                                seed=seed + len(cases),
                                nonfinite=kind == "gauss",
                                **shape,
                            )
                        )
            cases.append(
                dict(
                    kind="dyadic",
                    mode=mode,
                    k=ks.get(mode, [None])[0],
                    dtype=dtype,
                    codes=False,
                    seed=seed + 99,
                    **check_div16,
                )
            )
            if mode != "topk":  # statistics only: the flat kernel (default) and the sweep kernel
                for shape in ragged:
                    for kernel in ("flat", "sweep"):
                        cases.append(
                            dict(
                                kind="gauss",
                                mode=mode,
                                dtype=dtype,
                                codes=False,
                                seed=seed + 50 + len(cases),
                                nonfinite=True,
                                options={"kernel": kernel},
                                **shape,
                            )
                        )
            tasks.append({"device": device, "cases": cases})
    for dtype in ("bf16", "fp16"):  # 16-bit activations, fp32 weights: the reference on W_enc rounded to 16 bits
        cases = [
            dict(
                kind=kind, mode=mode, k=ks.get(mode, [None])[0], dtype=dtype, w_dtype="fp32", codes=True, seed=seed + 5
            )
            | ragged[0]
            for mode in ("relu", "topk")
            for kind in ("dyadic", "gauss")
        ]
        tasks.append({"device": device, "cases": cases})
    for mode, cfgs in configs.items():  # the timed kernels themselves, at their specialisation
        for cfg in cfgs:
            k = shapes[0]["k"] if mode == "topk" else None
            cases = [
                dict(kind=kind, mode=mode, k=k, dtype="bf16", codes=False, seed=seed + 7, options=cfg, **check_div16)
                for kind in ("dyadic", "gauss")
            ]
            if mode == "topk" and cfg == cfgs[0]:
                cases.append(
                    dict(
                        kind="dyadic",
                        mode=mode,
                        k=k,
                        dtype="bf16",
                        codes=True,
                        seed=seed + 8,
                        options=cfg,
                        **check_div16,
                    )
                )
            tasks.append({"device": device, "cases": cases})
    return tasks, shapes, configs


# -- offline sm_90 compile ----------------------------------------------------------------------
_PTR = dict(
    x_ptr="bf16", w_ptr="bf16", b_dec_ptr="bf16", bias_ptr="fp32", thr_ptr="fp32", fire_ptr="i64", sum_ptr="fp64",
    sq_ptr="fp64", part_sum_ptr="fp32", part_sq_ptr="fp32", max_ptr="fp32", margin_ptr="fp32",
    margin_count_ptr="i64", nonfinite_ptr="i64", row_ptr="i64", code_idx_ptr="i64", code_val_ptr="fp32",
    cand_ptr="i64", row_cnt_ptr="i32", row_tau_ptr="fp32", b_enc_ptr="fp32", out_ptr="fp32", ok_ptr="i8",
    val_ptr="fp32", idx_ptr="i32", cnt_ptr="i32", tau_ptr="fp32",
)  # fmt: skip
SASS_OPS = ("HGMMA", "HMMA", "FFMA", "LDGSTS", "UTMALDG", "BAR", "SHFL", "REDG", "ATOMG", "LDL", "STL")  # opcodes


def offline(args) -> int:
    """Compile each kernel variant for sm_90 (bf16, divisibility-16 hints, as the JIT specialises real
    shapes) and print its resources and SASS instruction counts."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pyfloor.kernels import flat, select, sweep, tiles

    base = dict(MODE=0, STATS=True, ATOMIC_SUMS=False, CODES=0, HALF_DOT=True, INPUT_PRECISION="ieee")
    base |= dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=64, KP=1, CAP=1, COMPACT_ROWS=16)
    topk = base | dict(MODE=2, KP=64, CAP=512)
    flat_c = dict(MODE=0, ATOMIC_SUMS=False, HALF_DOT=True, TMA=True, INPUT_PRECISION="ieee", GROUP=8)
    flat_c |= dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=64)
    fk, sk = flat._flat_stats_kernel, select._select_kernel
    sel_c = dict(ATOMIC_SUMS=False, CODES=False, HALF_DOT=True, TMA=True, INPUT_PRECISION="ieee")
    sel_c |= dict(BLOCK_N=128, BLOCK_M=64, BLOCK_K=64, KP=64, CAP=256, ROWS=8)
    cap = dict(maxnreg=128)  # the flat kernel's launch option at 8 warps
    variants = [
        ("flat relu stats", fk, flat_c, 8, cap),
        ("flat relu atomic", fk, flat_c | dict(ATOMIC_SUMS=True), 8, cap),
        ("flat jumprelu stats", fk, flat_c | dict(MODE=1), 8, cap),
        ("flat relu pointers", fk, flat_c | dict(TMA=False), 8, cap),
        ("flat relu, no cap", fk, flat_c, 8, {}),
        ("select topk64 stats", sk, sel_c, 8, {}),
        ("select topk64 atomic", sk, sel_c | dict(ATOMIC_SUMS=True), 8, {}),
        ("select topk64 codes", sk, sel_c | dict(CODES=True), 8, {}),
        ("select topk64 BLOCK_M 128", sk, sel_c | dict(BLOCK_M=128, CAP=512), 8, {}),
        ("select topk128 stats", sk, sel_c | dict(KP=128), 8, {}),
        ("select topk256 codes", sk, sel_c | dict(KP=256, CAP=512, ROWS=2, CODES=True), 8, {}),
        ("sweep relu stats", sweep._encode_stats_kernel, base, 8, {}),
        ("sweep relu atomic", sweep._encode_stats_kernel, base | dict(ATOMIC_SUMS=True), 8, {}),
        ("sweep jumprelu stats", sweep._encode_stats_kernel, base | dict(MODE=1), 8, {}),
        ("sweep relu CSR write", sweep._encode_stats_kernel, base | dict(STATS=False, CODES=2), 8, {}),
        ("sweep topk64 stats", sweep._encode_stats_kernel, topk, 8, {}),
        ("sweep topk64 atomic", sweep._encode_stats_kernel, topk | dict(ATOMIC_SUMS=True), 8, {}),
        ("row flags", tiles._row_flags_kernel, dict(BLOCK_N=64, BLOCK_K=64), 4, {}),
        ("reduce partials", tiles._reduce_partials_kernel, dict(BLOCK=256, UNROLL=8), 2, {}),
        ("fold bias", tiles._fold_bias_kernel, dict(BLOCK_D=32, BLOCK_M=128), 4, {}),
    ]
    if args.quick:
        variants = [v for v in variants if v[0] in ("flat relu stats", "select topk64 stats", "sweep topk64 stats")]
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    print(f"triton {triton.__version__}, sm_90, num_stages 3")
    print(f"{'variant':<24}{'regs':>6}{'stack':>7}{'smem':>8}{'SASS':>7}" + "".join(f"{op:>8}" for op in SASS_OPS))
    for name, kernel, consts, warps, extra in variants:
        ptrs = {a: "*" + t for a, t in _PTR.items()}
        if consts.get("TMA"):  # descriptors of the tiles: x [BLOCK_N, BLOCK_K], W_enc [BLOCK_K, BLOCK_M]
            bn, bm, bk = consts["BLOCK_N"], consts["BLOCK_M"], consts["BLOCK_K"]
            ptrs |= dict(x_ptr=f"tensordesc<bf16[{bn}, {bk}]>", w_ptr=f"tensordesc<bf16[{bk}, {bm}]>")
        names = kernel.arg_names
        sig = {a: "constexpr" if a in consts else ptrs.get(a, "i32") for a in names}
        hints = {
            (i,): [["tt.divisibility", 16]]
            for i, a in enumerate(names)
            if sig[a].startswith("*") or a in ("N", "D", "M", "stride_xn")
        }
        t = time.time()
        c = triton.compile(
            ASTSource(kernel, sig, consts, hints),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=warps, num_stages=3, **extra),
        )
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"])
            f.flush()
            res = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
            sass = subprocess.run([cuobjdump, "--dump-sass", f.name], capture_output=True, text=True).stdout
        field = {k: int(v) for k, v in re.findall(r"(REG|STACK):(\d+)", res)}
        opcodes = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass, flags=re.M)
        counts = {op: opcodes.count(op) for op in SASS_OPS}
        print(
            f"{name:<24}{field.get('REG', -1):>6}{field.get('STACK', -1):>7}{c.metadata.shared:>8}{len(opcodes):>7}"
            + "".join(f"{counts[op]:>8}" for op in SASS_OPS)
            + f"   ({time.time() - t:.0f} s)",
            flush=True,
        )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer configs and repeats; no reference at the large shape")
    ap.add_argument(
        "--cpu-dry-run", action="store_true", help="toy sizes on CPU in Triton's interpreter (tests this script)"
    )
    ap.add_argument("--workers", type=int, default=None, help="check processes (default: min(12, CPUs))")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the slow reference timings after this many seconds"
    )
    ap.add_argument(
        "--offline", action="store_true", help="no GPU: compile each kernel for sm_90, print resources and SASS counts"
    )
    args = ap.parse_args()
    if args.offline:
        return offline(args)
    t0 = time.time()
    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run to test this script on CPU", file=sys.stderr)
        return 2
    import triton

    info = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
    }
    print(json.dumps(info), flush=True)
    tasks, shapes, configs = plan(args, device)

    # 1. checks, in parallel: each worker compiles its own kernels (shared on-disk cache)
    workers = args.workers or (1 if args.cpu_dry_run else min(12, os.cpu_count() or 1))
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        checks = [rec for group in pool.map(check_task, tasks) for rec in group]
    failed = [c for c in checks if not c["ok"]]
    for c in checks:
        tag = "ok  " if c["ok"] else "FAIL"
        keys = (
            "count_diff",
            "count_allowed",
            "sum_err",
            "sq_err",
            "max_err",
            "codes_rows_differing",
            "codes_val_err",
            "repeatable",
        )
        print(
            tag,
            c["kind"],
            c["mode"],
            c.get("k"),
            c["dtype"],
            f"n={c['n']} d={c['d']} m={c['m']}",
            "codes" if c["codes"] else "stats",
            c["options"] or "",
            {k: c[k] for k in keys if k in c},
            c.get("error", ""),
            flush=True,
        )
    print(f"checks: {len(checks) - len(failed)}/{len(checks)} passed in {time.time() - t0:.0f} s", flush=True)
    out = os.environ.get("OUT")
    report: dict[str, Any] = {"info": info, "checks": checks, "floors": [floors(s) for s in shapes]}

    def save() -> None:
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    save()  # the checks survive a timeout in the timing phase

    # 2./3. ceilings and timing in this process (the timed kernels are compiled already)
    report["ceilings"] = ceilings(device, args.quick)
    print(json.dumps({"ceilings": report["ceilings"]}), flush=True)
    rows = report["timings"] = []
    for shape in shapes:
        rows += bench_shape(shape, configs, device, args, deadline=t0 + args.budget_s)
        save()

    def cell(v: float | None, width: int, fmt: str) -> str:
        return f"{v:>{width}{fmt}}" if v is not None else f"{'—':>{width}}"

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b is not None else None

    print(
        "\n" + f"{'shape':<24}{'mode':<8}{'fused ms':>9}{'TFLOP/s':>9}{'matmul ms':>10}{'TFLOP/s':>9}{'fused/mm':>9}"
        f"{'sweep ms':>9}{'sweep/mm':>9}{'eager ms':>9}{'compile ms':>11}{'ref ms':>9}{'eager/fused':>12}"
        f"{'compile/fused':>14}{'ref/fused':>10}{'peak MB':>9}{'N×m MB':>8}{'fixed/atomic':>13}{'fp32-W ms':>10}"
    )
    for r in rows:
        print(
            f"{r['shape']:<24}{r['mode']:<8}"
            + cell(r["fused_ms"], 9, ".3f")
            + cell(r["fused_TFLOPs"], 9, ".1f")
            + cell(r["matmul_ms"], 10, ".3f")
            + cell(r["matmul_TFLOPs"], 9, ".1f")
            + cell(ratio(r["fused_ms"], r["matmul_ms"]), 9, ".2f")
            + cell(r.get("sweep_ms"), 9, ".3f")
            + cell(ratio(r.get("sweep_ms"), r["matmul_ms"]), 9, ".2f")
            + cell(r["eager_ms"], 9, ".2f")
            + cell(r.get("compiled_ms"), 11, ".2f")
            + cell(r["reference_ms"], 9, ".1f")
            + cell(ratio(r["eager_ms"], r["fused_ms"]), 12, ".2f")
            + cell(ratio(r.get("compiled_ms"), r["fused_ms"]), 14, ".2f")
            + cell(ratio(r["reference_ms"], r["fused_ms"]), 10, ".2f")
            + cell(r.get("fused_peak_extra_MB"), 9, ".0f")
            + cell(r.get("dense_pre_MB"), 8, ".0f")
            + cell(ratio(r["default_ms"], r["atomic_ms"]), 13, ".3f")
            + cell(r["fp32_weights_ms"], 10, ".3f")
        )
    for shape in shapes:
        print("floors", shape, {k: round(v, 3) for k, v in floors(shape).items()})
    print("targets at d=1024 m=32768, bf16: fused/mm <= 1.15 (relu) and <= 1.3 (topk); sweep = the previous kernel")
    print(
        "fixed/atomic: default (reproducible) over atomic float sums; fp32-W: bf16 x with fp32 weights (cast per call)"
    )
    print(f"checks: {len(checks) - len(failed)}/{len(checks)} passed; total {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
