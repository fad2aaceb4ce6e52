"""Fuzz the measurement checkpoint loader (pyfloor.measure._load_checkpoint / _State.load).

Input: one mode byte, then the checkpoint file verbatim (even modes; the seed is a valid
checkpoint) or choices that derive one from a valid checkpoint (odd modes: tensors dropped, added,
re-typed, re-shaped or changed; metadata replaced). A load either restores a consistent state
(that saves and reloads to the same tensors) or raises CheckpointError and leaves the state as it was.

    python tools/fuzz/fuzz_checkpoint.py [libFuzzer args]
"""

from __future__ import annotations

import json
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(__file__))
from _common import expect_error, register_hist, shm_dir
from _files import fuzzed_file

register_hist()
import numpy as np
import torch

with atheris.instrument_imports():  # pyfloor only: instrumenting torch and numpy is slow
    from pyfloor import measure
    from pyfloor.histograms import FeatureHistograms, Histogram

torch.set_num_threads(1)
DIR = shm_dir("checkpoint")
M, REPLICATES = 3, 2
FINGERPRINT = {
    "source": "fuzz",
    "batch_tokens": 4,
    "sae_sha256": "0" * 64,
    "mode": "dense",
    "k": None,
    "bootstrap": REPLICATES,
    "seed": 0,
    "rank": 0,
    "world": 1,
}


def good_state() -> measure._State:
    s = measure._State(M, REPLICATES, torch.device("cpu"), histograms=True)
    s.rows, s.next_index, s.n_batches, s.rounds, s.seconds = 8, 2, 2, 2, 1.5
    s.sums.n_nonfinite.fill_(1)
    s.sums.fire_count.copy_(torch.tensor([3, 0, 7]))
    s.sums.act_sum.copy_(torch.tensor([1.0, 0, 2]))
    s.sums.act_sq_sum.copy_(torch.tensor([2.0, 0, 4]))
    s.sums.act_max.copy_(torch.tensor([1.0, 0, 1.5]))
    s.boot_n.copy_(torch.tensor([7, 5]))
    s.features = FeatureHistograms(M).fill(np.array([[0], [2]], np.int32), np.array([[0.5], [1.5]], np.float32))
    s.acts = Histogram().fill(np.array([0.25, -1, 3], np.float32))
    return s


GOOD = {k: v.numpy() for k, v in good_state().tensors().items()}
GOOD_META = {
    "format": measure.CHECKPOINT_FORMAT,
    "version": str(measure.CHECKPOINT_VERSION),
    "fingerprint": json.dumps(FINGERPRINT),
}


def snapshot(s: measure._State) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in s.tensors().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def TestOneInput(data: bytes) -> None:
    mode = data[0] if data else 0
    fdp = atheris.FuzzedDataProvider(data[1:])
    blob = data[1:] if mode % 2 == 0 else fuzzed_file(fdp, GOOD, GOOD_META)
    path = os.path.join(DIR, "checkpoint.safetensors")
    with open(path, "wb") as f:
        f.write(blob)
    state = measure._State(M, REPLICATES, torch.device("cpu"), histograms=True)
    before = snapshot(state)
    try:
        measure._load_checkpoint(measure.Path(path), state, FINGERPRINT)
    except Exception as exc:
        expect_error(exc)
        assert isinstance(exc, measure.CheckpointError), f"{type(exc).__name__} is not a CheckpointError"
        assert same(snapshot(state), before), "a refused checkpoint changed the state"
        return
    stats = state.stats()  # consistent totals
    assert stats.n_tokens == state.rows - int(state.sums.n_nonfinite) >= 0
    assert state.features.counts.shape == FeatureHistograms(M).counts.shape, "histograms of another shape"
    assert state.acts.binning == Histogram().binning
    assert 0 <= state.n_batches <= state.next_index
    loaded = snapshot(state)
    path2 = os.path.join(DIR, "again.safetensors")
    measure._save_checkpoint(measure.Path(path2), state, FINGERPRINT)
    again = measure._State(M, REPLICATES, torch.device("cpu"), histograms=True)
    measure._load_checkpoint(measure.Path(path2), again, FINGERPRINT)
    assert same(snapshot(again), loaded), "save -> load changed the checkpoint"


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
