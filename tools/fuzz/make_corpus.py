"""Write the seed corpus of every fuzz target to tools/fuzz/corpus/<target>/ (a few KB each).

python tools/fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def write(target: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def structured(target: str, modes: list[int], n: int = 4) -> None:
    """Seeds for the structured modes: the mode byte and a few bytes of choices."""
    rng = np.random.default_rng(0)
    for mode in modes:
        for _ in range(n):
            write(target, bytes([mode]) + rng.integers(0, 256, int(rng.integers(8, 64)), dtype=np.uint8).tobytes())


def main() -> None:
    import shutil

    shutil.rmtree(HERE / "corpus", ignore_errors=True)
    # histograms: the first choice picks fill / feature fill / from_dict / merge
    for op in range(4):
        for seed in range(4):
            rng = np.random.default_rng([op, seed])
            write("histograms", bytes([op]) + rng.integers(0, 256, 48, dtype=np.uint8).tobytes())
    write(
        "histograms",
        bytes([0, 2, 0, 0]) + np.array([np.nan, np.inf, -np.inf, 1e-40, 3e38, -0.0, 1.5], np.float32).tobytes(),
    )

    from pyfloor import FeatureStats, Measurement
    from pyfloor.sae import SAE

    tmp = Path(tempfile.mkdtemp())
    stats = FeatureStats(
        10,
        np.array([3, 0, 10, 1], np.int64),
        np.array([1.5, 0, 7, 0.25]),
        np.array([2.0, 0, 9, 0.0625]),
        np.array([1.0, 0, 2, 0.25]),
        2,
    )
    stats.save(tmp / "s.safetensors", metadata={"note": "seed"})
    write("stats", b"\0" + (tmp / "s.safetensors").read_bytes())
    m = Measurement.from_importances([4.0, 2.0, 1.0, 0.5], mean_l0=0.5, feature_ids=[7, 1, 3, 0])
    write("stats", b"\2" + json.dumps(m.to_dict()).encode())
    published = {"F_alive": 4, "avg_active": 0.5, "alpha": 0.875, "g_alpha": 3.9, "sorted_importance": [4, 2, 1, 0.5]}
    write("stats", b"\2" + json.dumps(published).encode())
    structured("stats", [1, 3])

    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    for activation, k in (("relu", None), ("topk", 2), ("jumprelu", None)):
        sae = SAE(3, 5, activation, k=k)
        sae.save(tmp / "sae.safetensors")
        write("sae", b"\0" + (tmp / "sae.safetensors").read_bytes())
    t = {k: v.detach() for k, v in SAE(3, 5).state_dict().items()}
    lens = {**t, "threshold": torch.full((5,), 0.1)}
    for cfg in (
        {"architecture": "jumprelu"},
        {"architecture": "topk", "k": 2, "rescale_acts_by_decoder_norm": True},
        {"apply_b_dec_to_input": False},
    ):
        save_file(lens, str(tmp / "w.safetensors"))
        c = json.dumps(cfg).encode()
        write("sae", b"\1" + len(c).to_bytes(2, "little") + c + (tmp / "w.safetensors").read_bytes())
    sp = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    save_file(sp, str(tmp / "w.safetensors"))
    c = json.dumps({"k": 2}).encode()
    write("sae", b"\2" + len(c).to_bytes(2, "little") + c + (tmp / "w.safetensors").read_bytes())
    structured("sae", [3, 4, 5])

    # checkpoint: a whole valid checkpoint is ~270 KB (the activation histogram): structured seeds only
    structured("checkpoint", [1, 3, 5], n=6)
    shutil.rmtree(tmp)
    for target in sorted(os.listdir(HERE / "corpus")):
        files = list((HERE / "corpus" / target).iterdir())
        print(f"{target}: {len(files)} seeds, {sum(f.stat().st_size for f in files):,} bytes")


if __name__ == "__main__":
    main()
