"""End-to-end measurement throughput: pyfloor's loop against the paper's loop, same model, same device.

The paper's loop (a faithful re-implementation of the measurement in Sarkar & Deka 2026): a full
forward pass with every hidden state returned, the dense SAE encode of the hooked layer, the
decode (for reconstruction error), and torch reductions of the dense latents (fire counts, Σz²).
pyfloor's loop: the forward stopped after the hooked layer, the fused encode + statistics
(Triton on CUDA, the chunked torch reference on CPU), no decode.

    python benchmarks/measure_loop.py --size tiny                 # CPU
    python benchmarks/measure_loop.py --size pythia-410m --device cuda --dtype bfloat16

Weights are random (built from the architecture's config; no network). Prints one table and, if
$OUT is set, writes measure_loop.json there.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pyfloor.encode import StatsAccumulator
from pyfloor.sae import SAE
from pyfloor.sources import TeacherSource, TokenSequences

#: (GPTNeoXConfig kwargs, hooked layer, SAE latents)
SIZES = {
    "tiny": (
        dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512, vocab_size=1024),
        3,
        1024,
    ),
    "pythia-410m": (
        dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            vocab_size=50304,
            rotary_pct=0.25,
        ),
        12,
        32768,
    ),
}


def build(size: str, device: torch.device, dtype: torch.dtype, seq_len: int) -> tuple[torch.nn.Module, int, SAE]:
    """A GPT-NeoX teacher of the given size with random weights, its hooked layer, and an SAE."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    kwargs, layer, latents = SIZES[size]
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(max_position_embeddings=max(2048, seq_len), **kwargs))
    model = model.to(device=device, dtype=dtype).eval()
    sae = SAE(kwargs["hidden_size"], latents, "relu", dtype=dtype, device=device)
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)
    return model, layer, sae


@torch.no_grad()
def paper_loop(model: torch.nn.Module, layer: int, seqs: TokenSequences, sae: SAE, batch_sequences: int) -> int:
    """Full forward, dense encode, decode, torch reductions; returns tokens measured."""
    dev = sae.W_enc.device
    fire = torch.zeros(sae.n_latents, device=dev)
    sq = torch.zeros(sae.n_latents, device=dev)
    n = 0
    for start in range(0, len(seqs), batch_sequences):
        ids = seqs.rows(start, start + batch_sequences)[0].to(dev)
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
        h = hidden.reshape(-1, hidden.shape[-1])
        z = torch.relu((h - sae.b_dec) @ sae.W_enc + sae.b_enc)
        x_hat = z @ sae.W_dec + sae.b_dec
        _ = (x_hat - h).pow(2).sum(-1).mean()
        fire += (z > 0).float().sum(0)
        sq += z.float().pow(2).sum(0)
        n += h.shape[0]
    _ = fire.sum().item() + sq.sum().item()  # wait for the device
    return n


def pyfloor_loop(model: torch.nn.Module, layer: int, seqs: TokenSequences, sae: SAE, batch_sequences: int) -> int:
    """Stopped forward, fused encode + statistics; returns tokens measured."""
    src = TeacherSource(model, layer, seqs, batch_sequences * seqs.seq_len)
    acc = StatsAccumulator(sae)
    for batch in src.batches():
        acc.update(batch.acts)
    return acc.result().n_tokens


def timed(fn, *args) -> tuple[float, int]:
    """Seconds and tokens of one call, the device synchronised around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-sequences", type=int, default=16)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, layer, sae = build(args.size, device, dtype, args.seq_len)
    n_seq = args.batch_sequences * args.batches
    ids = torch.randint(0, model.config.vocab_size, (n_seq, args.seq_len), generator=torch.Generator().manual_seed(1))
    seqs = TokenSequences(ids, torch.ones_like(ids), "random tokens")
    loops = {"paper": paper_loop, "pyfloor": pyfloor_loop}
    for fn in loops.values():  # warm-up: kernel compilation, allocator, caches
        fn(
            model,
            layer,
            TokenSequences(ids[: args.batch_sequences], torch.ones_like(ids[: args.batch_sequences]), "w"),
            sae,
            args.batch_sequences,
        )
    results = {}
    for name, fn in loops.items():
        runs = [timed(fn, model, layer, seqs, sae, args.batch_sequences) for _ in range(args.repeats)]
        best = min(s for s, _ in runs)
        results[name] = {"seconds": best, "tokens": runs[0][1], "tokens_per_second": runs[0][1] / best}
    ratio = results["pyfloor"]["tokens_per_second"] / results["paper"]["tokens_per_second"]
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"{args.size} teacher, layer {layer}, SAE {sae.d_in}→{sae.n_latents}, {args.dtype}, {device_name}")
    print(f"{'loop':<10}{'tokens':>10}{'best s':>10}{'tokens/s':>14}")
    for name, r in results.items():
        print(f"{name:<10}{r['tokens']:>10,}{r['seconds']:>10.3f}{r['tokens_per_second']:>14,.0f}")
    print(f"pyfloor / paper: {ratio:.2f}x")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], f"measure_loop_{args.size}.json"), "w") as f:
            json.dump({"args": vars(args), "device": device_name, "results": results, "ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
