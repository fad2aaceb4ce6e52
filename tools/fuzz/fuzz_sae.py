"""Fuzz pyfloor.sae.load_sae on pyfloor SAE files and on SAELens / sparsify directories
(cfg.json + safetensors).

Input: one mode byte (layout = mode % 3: pyfloor file, SAELens dir, sparsify dir; mode // 3 % 2:
raw bytes or fuzzed structure). Raw: a 2-byte length L, then L bytes of cfg.json (directories only),
then the weights file verbatim. A load either gives a consistent SAE (finite weights, matching
shapes, non-negative latents, save -> load equal, metadata included) or raises ValueError (CheckpointError) /
TypeError / FileNotFoundError.

    python tools/fuzz/fuzz_sae.py [libFuzzer args]
"""

from __future__ import annotations

import os
import shutil
import sys

import atheris

sys.path.insert(0, os.path.dirname(__file__))
import numpy as np
import torch
from _common import expect_error, shm_dir
from _files import dump_json, fuzzed_file, fuzzed_json

with atheris.instrument_imports():  # pyfloor only: instrumenting torch and numpy is slow
    from pyfloor.sae import SAE, load_sae

torch.set_num_threads(1)
DIR = shm_dir("sae")
D, M = 3, 5
_g = np.random.default_rng(0)
W_ENC = _g.standard_normal((D, M)).astype(np.float32)
W_DEC = _g.standard_normal((M, D)).astype(np.float32)
B_ENC, B_DEC = np.zeros(M, np.float32), np.full(D, 0.5, np.float32)
LAYOUTS = {
    "pyfloor": ({"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC}, None),
    "saelens": (
        {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC, "threshold": np.full(M, 0.1, np.float32)},
        {
            "architecture": "jumprelu",
            "k": 2,
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            "rescale_acts_by_decoder_norm": False,
        },
    ),
    "sparsify": (
        {"encoder.weight": np.ascontiguousarray(W_ENC.T), "encoder.bias": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC},
        {"k": 2, "activation": "topk", "transcode": False},
    ),
}
METADATA = {"source": "x", "hook_name": "blocks.1.hook_resid_post", "training": {"lr": 1e-3, "steps": [1, 2]}}
CONFIGS = [
    {"d_in": D, "n_latents": M, "activation": "relu", "k": None},
    {"d_in": D, "n_latents": M, "activation": "topk", "k": 2},
]


def check_sae(sae: SAE) -> None:
    sd = sae.state_dict()
    assert sae.W_enc.shape == (sae.d_in, sae.n_latents) and sae.W_dec.shape == (sae.n_latents, sae.d_in)
    assert sae.b_enc.shape == (sae.n_latents,) and sae.b_dec.shape == (sae.d_in,)
    assert all(torch.isfinite(v).all() for v in sd.values()), "non-finite weights loaded"
    if sae.activation == "topk":
        assert isinstance(sae.k, int) and 1 <= sae.k <= sae.n_latents, sae.k
    with torch.no_grad():
        x = torch.randn(4, sae.d_in, dtype=sae.W_enc.dtype)
        z, finite = sae.encode(x), torch.isfinite(sae.pre_activations(x))
    # where huge (finite) weights overflow the pre-activations to ±inf, latents may be NaN (JumpReLU: -inf·0)
    assert z.shape == (4, sae.n_latents) and bool((z[finite] >= 0).all()), "negative latents"
    path = os.path.join(DIR, "roundtrip.safetensors")
    sae.save(path)
    back = SAE.load(path)
    assert back.config() == sae.config()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in sd.items()), "save -> load changed the weights"
    kept = {k: v for k, v in sae.metadata.items() if k != "path"}  # where it was read from is not saved
    assert back.metadata == kept, "save -> load changed the metadata"


def TestOneInput(data: bytes) -> None:
    mode = data[0] if data else 0
    layout = ["pyfloor", "saelens", "sparsify"][mode % 3]
    raw = (mode // 3) % 2 == 0
    rest = data[1:]
    tensors, cfg = LAYOUTS[layout]
    fdp = atheris.FuzzedDataProvider(rest)
    if raw:
        n = int.from_bytes(rest[:2], "little") if layout != "pyfloor" else 0
        cfg_text, weights = (
            rest[2 : 2 + n] if layout != "pyfloor" else b"",
            rest[2 + n :] if layout != "pyfloor" else rest,
        )
    else:
        if layout == "pyfloor":
            config = dump_json(fuzzed_json(fdp, fdp.PickValueInList(CONFIGS)))
            metadata = dump_json(fuzzed_json(fdp, METADATA))
            meta = {"format": "pyfloor.SAE", "version": "1", "config": config, "metadata": metadata}
            cfg_text = b""
        else:
            meta = {"format": "pt"}
            cfg_text = dump_json(fuzzed_json(fdp, cfg)).encode()
        weights = fuzzed_file(fdp, tensors, meta)
    if layout == "pyfloor":
        path = os.path.join(DIR, "sae.safetensors")
    else:
        path = os.path.join(DIR, "dir")
        shutil.rmtree(path, ignore_errors=True)
        os.mkdir(path)
        with open(os.path.join(path, "cfg.json"), "wb") as f:
            f.write(cfg_text)
        path_w = os.path.join(path, "sae_weights.safetensors" if layout == "saelens" else "sae.safetensors")
    with open(path if layout == "pyfloor" else path_w, "wb") as f:
        f.write(weights)
    try:
        sae = load_sae(path)
    except Exception as exc:
        expect_error(exc)
        return
    check_sae(sae)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
