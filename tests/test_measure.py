"""pyfloor.measure, pyfloor.sources and pyfloor.distributed on a CPU."""

import copy
import dataclasses
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyfloor.features import Estimator, count_features
from pyfloor.measure import MeasureConfig, _estimates, bootstrap_weights, measure, measure_family
from pyfloor.sae import SAE
from pyfloor.sources import ArraySource, IterableSource, TeacherSource, TokenSequences, find_layer
from pyfloor.stats import CheckpointError, FeatureStats


def sparse_sae(d, m, seed=0, bias=-0.6, scale=1.0):
    """A ReLU SAE with random unit directions; ``scale`` brings the activations' projections to O(1)."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, m, "relu")
    with torch.no_grad():
        w = torch.randn(d, m, generator=g)
        sae.W_enc.copy_(scale * w / w.norm(dim=0))
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(bias)
        sae.b_dec.copy_(torch.randn(d, generator=g) * 0.1)
    return sae


def token_sequences(n_seq=12, seq_len=16, bos=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (n_seq, seq_len), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, 10:] = 0  # a padded tail
    if bos is not None:
        ids[:, 0] = bos
        ids[:, 7] = bos  # the same id inside a sequence (BOS = EOS, as in Pythia) is a real token
    return TokenSequences(ids, mask, "random tokens", leading_bos=bos is not None)


def test_teacher_end_to_end_equals_numpy_by_hand(tiny_neox):
    seqs = token_sequences(bos=5)
    src = TeacherSource(tiny_neox, 1, seqs, batch_tokens=64)
    sae = sparse_sae(32, 80, bias=-0.8, scale=40.0)  # residual activations have std ≈ 0.025 here
    result = measure(src, sae, MeasureConfig(bootstrap=8, widths=[1, 2, 4]), progress=False)

    ids, mask = seqs.rows()
    with torch.no_grad():
        hidden = tiny_neox(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    keep = mask.bool()
    keep[:, 0] = False  # the leading BOS only
    x = hidden[keep].numpy().astype(np.float64)
    W, b_enc, b_dec = (p.detach().numpy().astype(np.float64) for p in (sae.W_enc, sae.b_enc, sae.b_dec))
    z = np.maximum((x - b_dec) @ W + b_enc, 0)
    n = x.shape[0]
    assert 0.05 < (z > 0).mean() < 0.5  # a sparse code, not a degenerate one
    freq = (z > 0).mean(0)
    alive = freq > 1e-5
    f = int(alive.sum())
    l0 = (z > 0).sum() / n
    imp = np.sort((z**2).mean(0)[alive])[::-1]

    m = result.estimators["paper"]["measurement"]
    assert result.stats.n_tokens == n == int(keep.sum())
    assert m.n_features == f and m.mean_l0 == pytest.approx(l0, rel=1e-12)
    assert m.alpha == pytest.approx(1 - l0 / f, rel=1e-12)
    np.testing.assert_allclose(m.importances, imp, rtol=1e-5, atol=1e-10 * imp[0])  # fp32 encode vs fp64
    band = ((z > 0) & (z <= -b_enc)).sum(0)  # the margin band of a ReLU latent with b_enc < 0: 0 < z ≤ −b_enc
    assert band.sum() > 0 and np.abs(result.stats.margin_count - band).max() <= 1  # fp32 vs fp64 at the edge
    lead = result.measurement  # the merged estimator leads
    assert result.config["estimator"] == "merged" and lead.notes[0].startswith("merged")
    floors = [iv["estimate"] for iv in result.intervals["floors"]]
    np.testing.assert_allclose(floors, lead.floor([1, 2, 4]), rtol=1e-12)
    for iv in result.intervals["floors"]:
        assert iv["low"] <= iv["high"]


def test_forward_stops_after_the_hooked_layer(tiny_neox):
    calls = []
    handles = [
        blk.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, blk in enumerate(tiny_neox.gpt_neox.layers)
    ]
    handles.append(tiny_neox.get_output_embeddings().register_forward_hook(lambda *a: calls.append("lm_head")))
    try:
        src = TeacherSource(tiny_neox, 1, token_sequences(), batch_tokens=64)
        calls.clear()
        batches = list(src.batches())
    finally:
        for h in handles:
            h.remove()
    assert len(batches) == 3
    assert calls == [0, 1] * 3  # blocks 2, 3 and the LM head never ran


def test_packed_token_files_are_read_lazily_and_split(tmp_path):
    from pyfloor.sources import token_file_sequences

    stream = np.arange(1, 101, dtype=np.uint16)
    stream.tofile(tmp_path / "t.bin")
    seqs = token_file_sequences(tmp_path / "t.bin", 8, bos_token_id=0, pad_token_id=999)
    assert len(seqs) == 15 and seqs.leading_bos  # 100 tokens, 7 per sequence after the BOS
    ids, mask = seqs.rows(14, 15)
    assert ids.tolist() == [[0, 99, 100, 999, 999, 999, 999, 999]] and mask.sum() == 3
    head, tail = seqs.take(20), seqs.skip(20)
    assert len(head) == 3 and len(tail) == 12
    assert tail.rows(0, 1)[0].tolist() == [[0, 22, 23, 24, 25, 26, 27, 28]]
    with pytest.raises(ValueError, match="no token sequences"):
        seqs.skip(10_000)


def test_mlp_site_and_module_names(tiny_neox):
    name, module = find_layer(tiny_neox, 2, site="mlp")
    assert name == "gpt_neox.layers.2.mlp" and module is tiny_neox.gpt_neox.layers[2].mlp
    src = TeacherSource(tiny_neox, "gpt_neox.layers.2.mlp", token_sequences(), batch_tokens=64)
    assert src.d == 32 and next(src.batches()).acts.shape[1] == 32


def test_unknown_layer_lists_the_valid_ones(tiny_neox):
    with pytest.raises(ValueError, match=r"no layer 'gpt_neox.layers.9'.*gpt_neox.layers.3.mlp"):
        find_layer(tiny_neox, "gpt_neox.layers.9")
    with pytest.raises(ValueError, match=r"blocks 0 … 3"):
        find_layer(tiny_neox, 7)


def test_sae_width_must_match_the_layer(tiny_neox):
    src = TeacherSource(tiny_neox, 1, token_sequences(), batch_tokens=64)
    with pytest.raises(ValueError, match="width 32 but the SAE expects d_in = 16"):
        measure(src, sparse_sae(16, 40), progress=False)


def test_empty_stream_and_all_nonfinite_stream():
    sae = sparse_sae(8, 20)
    with pytest.raises(ValueError, match="no usable tokens"):
        measure(IterableSource([], 8, 16), sae, progress=False)
    bad = torch.full((10, 8), float("nan"))
    with pytest.raises(ValueError, match="10 were non-finite"):
        measure(IterableSource([bad], 8, 16), sae, progress=False)


@pytest.mark.numerics
def test_nonfinite_activations_are_counted_and_excluded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x[[5, 77]] = np.nan
    x[100, 3] = np.inf
    sae = sparse_sae(8, 20)
    r = measure(ArraySource([x], 64), sae, MeasureConfig(bootstrap=0), progress=False)
    assert r.stats.n_nonfinite == 3 and r.stats.n_tokens == 297
    clean = np.delete(x, [5, 77, 100], axis=0)
    ref = measure(ArraySource([clean], 64), sae, MeasureConfig(bootstrap=0), progress=False).stats
    np.testing.assert_array_equal(r.stats.fire_count, ref.fire_count)


def test_max_tokens_rounds_up_to_whole_batches():
    x = np.random.default_rng(1).normal(size=(1000, 8)).astype(np.float32)
    r = measure(ArraySource([x], 128), sparse_sae(8, 20), MeasureConfig(max_tokens=300, bootstrap=0), progress=False)
    assert r.stats.n_tokens == 384 and "max_tokens" in r.stopped


def test_histograms_count_every_active_latent_and_activation():
    x = np.random.default_rng(6).normal(size=(700, 8)).astype(np.float32)
    x[3, 2] = np.nan
    r = measure(ArraySource([x], 128), sparse_sae(8, 20), MeasureConfig(bootstrap=0), progress=False)
    np.testing.assert_array_equal(r.feature_histograms.n_values, r.stats.fire_count)
    assert r.activation_histogram.total == x.size and r.activation_histogram.counters()["nan"] == 1
    med = r.feature_histograms.quantile(0.5)
    alive = r.stats.fire_count > 0
    assert np.all(med[alive] <= r.stats.act_max[alive] * (1 + 2**-3))
    every3 = measure(
        ArraySource([x], 128), sparse_sae(8, 20), MeasureConfig(bootstrap=0, histogram_every=3), progress=False
    )
    assert every3.activation_histogram.total == 128 * 8 * 2  # batches 0 and 3 of 6
    off = measure(
        ArraySource([x], 128), sparse_sae(8, 20), MeasureConfig(bootstrap=0, histograms=False), progress=False
    )
    assert off.feature_histograms is None and off.stats == r.stats


def test_max_tokens_counts_positions_fed_to_a_teacher(tiny_neox):
    seqs = token_sequences(n_seq=40, seq_len=16, bos=5)
    src = TeacherSource(tiny_neox, 1, seqs, batch_tokens=60)  # 3 sequences, 48 positions a batch
    assert src.batch_tokens == 48
    r = measure(src, sparse_sae(32, 40, scale=40.0), MeasureConfig(max_tokens=200, bootstrap=0), progress=False)
    assert r.n_batches == 5 and r.stats.n_tokens == 5 * 3 * 15  # BOS positions left out
    assert r.stopped.startswith("reached max_tokens")


def test_batches_must_be_two_dimensional():
    class Cube(IterableSource):
        def batches(self, **kw):
            from pyfloor.sources import Batch

            yield Batch(0, torch.randn(4, 100, 8))

    with pytest.raises(ValueError, match=r"\[tokens, 8\] activations; got shape \(4, 100, 8\)"):
        measure(Cube([], 8, 16), sparse_sae(8, 20), progress=False)


def test_iterable_source_recuts_like_array_source():
    x = np.random.default_rng(7).normal(size=(1000, 8))  # float64 arrives as float32
    pieces = [x[:3], x[3:400], x[400:401], x[401:]]
    a = [b.acts for b in ArraySource([x], 64).batches()]
    b = [b.acts for b in IterableSource(iter(pieces), 8, 64).batches()]
    assert len(a) == len(b) == 16 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert a[0].dtype == torch.float32


def test_bootstrap_weights_are_deterministic_per_batch():
    a = bootstrap_weights(0, 17, 32)
    assert np.array_equal(a, bootstrap_weights(0, 17, 32))
    assert not np.array_equal(a, bootstrap_weights(0, 18, 32))
    assert a.dtype == np.int64 and a.mean() == pytest.approx(1, abs=0.5)


def test_floor_intervals_are_basic_bootstrap_intervals(tmp_path):
    """1,024 latents of equal true importance: every replicate re-sorts noisy importances, so its
    floor is biased low, and the percentile interval lies below the estimate at some widths."""
    from safetensors.torch import load_file

    sae = sparse_sae(32, 1024, bias=-2.0)
    sae.b_dec.data.zero_()  # every latent reads a unit direction of N(0, I) activations: equal importance
    x = np.random.default_rng(0).normal(size=(100_000, 32)).astype(np.float32)
    widths = np.array([16, 32, 64, 88])
    ckpt = tmp_path / "c.safetensors"
    cfg = MeasureConfig(bootstrap=32, widths=widths, checkpoint=ckpt, histograms=False, estimator="paper")
    r = measure(ArraySource([x], 2000), sae, cfg, progress=False)  # 50 batches
    t = load_file(str(ckpt))  # the replicates' weighted sums
    counter = Estimator("paper").bind(sae)
    reps = [
        _estimates(counter, float(t["boot_n"][i]), t["boot_fire"][i].numpy(), t["boot_s2"][i].numpy(), None, widths)
        for i in range(32)
    ]
    floors = np.stack([rep["floors"] for rep in reps])
    below = []
    for i, iv in enumerate(r.intervals["floors"]):
        est = iv["estimate"]
        q_lo, q_hi = np.percentile(floors[:, i], [2.5, 97.5])
        assert iv["low"] == pytest.approx(max(0.0, 2 * est - q_hi), rel=1e-12, abs=1e-15)
        assert iv["high"] == pytest.approx(max(0.0, 2 * est - q_lo), rel=1e-12, abs=1e-15)
        assert iv["bias"] == pytest.approx(floors[:, i].mean() - est, rel=1e-9, abs=1e-15)
        if q_hi < est:
            below.append(iv["width"])
            assert iv["bias"] < 0 and iv["low"] > est  # the correction lifts the interval above the biased estimate
    assert below == [32, 64]
    last = r.intervals["floors"][-1]
    assert last["estimate"] == 0 and last["low"] == last["high"] == 0  # 2·0 − q_hi < 0 is clipped to 0
    alphas = [rep["alpha"] for rep in reps]  # the other quantities keep percentile intervals
    assert r.intervals["alpha"]["low"] == pytest.approx(np.percentile(alphas, 2.5), rel=1e-12)
    assert r.intervals["alpha"]["high"] == pytest.approx(np.percentile(alphas, 97.5), rel=1e-12)


def test_until_stable_stops_early():
    x = np.random.default_rng(2).normal(size=(20000, 8)).astype(np.float32)
    cfg = MeasureConfig(until_stable=0.05, check_every=5, bootstrap=16)
    r = measure(ArraySource([x], 200), sparse_sae(8, 20, bias=-0.3), cfg, progress=False)
    assert r.stopped.startswith("d* stable") and r.stats.n_tokens < 20000
    iv = r.intervals["critical_width"]
    assert iv["high"] - iv["low"] <= 0.05 * r.measurement.critical_width


# -- checkpoints -------------------------------------------------------------------------------------
@pytest.mark.numerics
def test_resume_is_bit_identical(tmp_path):
    x = np.random.default_rng(3).normal(size=(2000, 8)).astype(np.float32)
    sae = sparse_sae(8, 30)
    full = measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=8), progress=False)
    ckpt = tmp_path / "run.ckpt.safetensors"
    part = MeasureConfig(bootstrap=8, max_tokens=700, checkpoint=ckpt, checkpoint_every=200)
    measure(ArraySource([x], 100), sae, part, progress=False)
    resumed = measure(
        ArraySource([x], 100), sae, MeasureConfig(bootstrap=8, checkpoint=ckpt, resume=True), progress=False
    )
    assert resumed.stats == full.stats  # bit-identical sums, counts and maxima
    assert resumed.intervals == full.intervals
    assert resumed.feature_histograms == full.feature_histograms
    assert resumed.activation_histogram == full.activation_histogram
    assert resumed.n_batches == full.n_batches == 20


@pytest.mark.numerics
def test_resumed_until_stable_run_stops_where_the_uninterrupted_one_does(tmp_path):
    x = np.random.default_rng(8).normal(size=(20000, 8)).astype(np.float32)
    sae = sparse_sae(8, 20, bias=-0.3)
    cfg = dict(until_stable=0.05, check_every=4, bootstrap=16)
    full = measure(ArraySource([x], 200), sae, MeasureConfig(**cfg), progress=False)
    ckpt = tmp_path / "c.safetensors"
    measure(
        ArraySource([x], 200),
        sae,
        MeasureConfig(**cfg, max_tokens=600, checkpoint=ckpt, checkpoint_every=1),
        progress=False,
    )
    resumed = measure(ArraySource([x], 200), sae, MeasureConfig(**cfg, checkpoint=ckpt, resume=True), progress=False)
    assert full.n_batches == 4 and full.stopped.startswith("d* stable")  # the interruption comes before it
    assert resumed.stats == full.stats and resumed.stopped == full.stopped


def test_fresh_run_refuses_to_overwrite_an_existing_checkpoint(tmp_path):
    x = np.random.default_rng(9).normal(size=(300, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    ckpt = tmp_path / "c.safetensors"
    measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=ckpt, max_tokens=100), progress=False)
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="already exists: resume it, or start over with overwrite"):
        measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=ckpt), progress=False)
    assert ckpt.read_bytes() == before
    measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=ckpt, overwrite=True), progress=False)
    assert ckpt.read_bytes() != before


def test_overwrite_replaces_only_a_measure_checkpoint(tmp_path):
    from safetensors.torch import save_file

    x = np.random.default_rng(9).normal(size=(300, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    sae.save(tmp_path / "sae.safetensors")
    np.save(tmp_path / "acts.npy", x)
    FeatureStats.empty(3).save(tmp_path / "stats.safetensors")
    save_file({"W_enc": torch.zeros(8, 20)}, str(tmp_path / "foreign.safetensors"))  # e.g. another library's SAE
    (tmp_path / "dir.safetensors").mkdir()
    cases = {
        "foreign.safetensors": "is not a pyfloor file, not a pyfloor measure checkpoint",
        "sae.safetensors": r"is a pyfloor\.SAE file, not a pyfloor measure checkpoint",
        "acts.npy": "is not a pyfloor file, not a pyfloor measure checkpoint",
        "stats.safetensors": r"is a pyfloor\.FeatureStats file, not a pyfloor measure checkpoint",
        "dir.safetensors": "is a directory",
    }
    for name, message in cases.items():
        path = tmp_path / name
        before = None if path.is_dir() else path.read_bytes()
        with pytest.raises(CheckpointError, match=f"{name} {message}"):
            measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=path, overwrite=True), progress=False)
        assert path.is_dir() if before is None else path.read_bytes() == before
    assert SAE.load(tmp_path / "sae.safetensors").n_latents == 20


def test_resume_with_other_sequences_or_teacher_dtype_is_refused(tiny_neox, tmp_path):
    stream = np.random.default_rng(11).integers(1, 97, size=600)
    sae = sparse_sae(32, 40, scale=40.0)
    ckpt = tmp_path / "c.safetensors"

    def source(seq_len, bos=None, model=tiny_neox, **kw):  # the same description and batch_tokens every time
        return TeacherSource(model, 1, TokenSequences.packed(stream, seq_len, "tokens", bos=bos), 64, **kw)

    measure(source(16), sae, MeasureConfig(bootstrap=0, checkpoint=ckpt, max_tokens=64), progress=False)
    good = ckpt.read_bytes()
    resume = MeasureConfig(bootstrap=0, checkpoint=ckpt, resume=True)
    with pytest.raises(CheckpointError, match="different run.*seq_len: checkpoint 16 vs now 8"):
        measure(source(8), sae, resume, progress=False)
    with pytest.raises(CheckpointError, match="different run.*leading_bos: checkpoint False vs now True"):
        measure(source(16, bos=5), sae, resume, progress=False)
    wide = copy.deepcopy(tiny_neox).double()
    with pytest.raises(
        CheckpointError, match="different run.*teacher_dtype: checkpoint 'torch.float32' vs now 'torch.float64'"
    ):
        measure(source(16, model=wide, dtype=torch.float32), sae, resume, progress=False)
    assert ckpt.read_bytes() == good
    assert measure(source(16), sae, resume, progress=False).stats.n_tokens == 600


def test_measuring_time_adds_up_over_resumed_runs(tmp_path, monkeypatch):
    now = [0.0]

    def clock():  # each reading of the clock is 10 s after the last
        now[0] += 10.0
        return now[0]

    monkeypatch.setattr("pyfloor.measure.time", SimpleNamespace(perf_counter=clock))
    x = np.random.default_rng(12).normal(size=(1000, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    ckpt = tmp_path / "c.safetensors"
    first = measure(
        ArraySource([x], 100), sae, MeasureConfig(bootstrap=0, checkpoint=ckpt, max_tokens=400), progress=False
    )
    assert first.seconds == 10.0 and first.tokens_per_second == 40.0
    resume = MeasureConfig(bootstrap=0, checkpoint=ckpt, resume=True)
    rest = measure(ArraySource([x], 100), sae, resume, progress=False)
    assert rest.stats.n_tokens == 1000 and rest.seconds == 20.0 and rest.tokens_per_second == 50.0
    done = measure(ArraySource([x], 100), sae, resume, progress=False)  # a completed run resumed: nothing to read
    assert done.seconds == 30.0 and done.to_dict()["tokens_per_second"] == pytest.approx(1000 / 30)


def test_checkpoint_without_measuring_time_resumes_with_the_time_unknown(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    x = np.random.default_rng(13).normal(size=(500, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    ckpt = tmp_path / "c.safetensors"
    measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, max_tokens=200), progress=False)
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ckpt))
    del tensors["seconds"]  # as version 1 wrote it
    del tensors["margin_count"], tensors["boot_margin"], tensors["margin_known"]  # nor margin counts
    save_file(tensors, str(ckpt), metadata={**meta, "version": "1"})
    r = measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, resume=True), progress=False)
    full = measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4), progress=False)
    assert math.isnan(r.seconds) and math.isnan(r.tokens_per_second)
    assert r.stats.margin_count is None and full.stats.margin_count is not None  # unknown, not zero
    full.stats.margin_count = None
    assert r.stats == full.stats
    assert any("no margin counts" in note for note in r.measurement.notes)
    save_file(tensors, str(ckpt), metadata=meta)  # version 3 must record them
    with pytest.raises(CheckpointError, match="lacks boot_margin, margin_count, margin_known, seconds"):
        measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, resume=True), progress=False)


def test_checkpoint_with_impossible_contents_is_refused_and_kept(tmp_path):
    from safetensors.torch import load_file, save_file

    x = np.random.default_rng(10).normal(size=(300, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    ckpt = tmp_path / "c.safetensors"
    measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=ckpt, max_tokens=100), progress=False)
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    for name, poison in (("act_sq_sum", float("nan")), ("fire_count", 10**6)):
        t = load_file(str(ckpt))
        t[name][0] = poison
        bad = tmp_path / f"bad-{name}.safetensors"
        save_file(t, str(bad), metadata=meta)
        before = bad.read_bytes()
        with pytest.raises(CheckpointError, match="inconsistent totals"):
            measure(ArraySource([x], 100), sae, MeasureConfig(checkpoint=bad, resume=True), progress=False)
        assert bad.read_bytes() == before


def test_corrupt_or_foreign_checkpoint_is_refused_and_kept(tmp_path):
    x = np.random.default_rng(4).normal(size=(500, 8)).astype(np.float32)
    sae = sparse_sae(8, 30)
    ckpt = tmp_path / "run.ckpt.safetensors"
    measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, max_tokens=200), progress=False)
    good = ckpt.read_bytes()

    other = sparse_sae(8, 30, seed=1)
    with pytest.raises(CheckpointError, match="different run.*sae_sha256"):
        measure(ArraySource([x], 100), other, MeasureConfig(bootstrap=4, checkpoint=ckpt, resume=True), progress=False)
    with pytest.raises(CheckpointError, match="different run.*batch_tokens"):
        measure(ArraySource([x], 50), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, resume=True), progress=False)
    assert ckpt.read_bytes() == good

    ckpt.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=4, checkpoint=ckpt, resume=True), progress=False)
    assert ckpt.read_bytes() == good[: len(good) // 2]

    FeatureStats.empty(3).save(tmp_path / "stats.safetensors")
    with pytest.raises(CheckpointError, match="not a pyfloor measurement checkpoint"):
        measure(
            ArraySource([x], 100),
            sae,
            MeasureConfig(bootstrap=4, checkpoint=tmp_path / "stats.safetensors", resume=True),
            progress=False,
        )


# -- distributed ----------------------------------------------------------------------------------------
def _rank_main(rank, world, init_file, out_dir, x):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = MeasureConfig(
            bootstrap=8, widths=[1, 2], check_every=2, checkpoint=os.path.join(out_dir, "c.safetensors")
        )
        r = measure(ArraySource([x], 64), sparse_sae(8, 30), cfg, progress=True)
        stable = MeasureConfig(bootstrap=8, until_stable=0.5, check_every=3)
        s = measure(ArraySource([x], 64), sparse_sae(8, 30), stable, progress=True)
        assert s.stopped.startswith("d* stable"), s.stopped
        r.stats.save(os.path.join(out_dir, f"stats{rank}.safetensors"))
        np.save(os.path.join(out_dir, f"hist{rank}.npy"), r.feature_histograms.counts)
        with open(os.path.join(out_dir, f"intervals{rank}.json"), "w") as f:
            json.dump(r.intervals, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.numerics
def test_two_gloo_processes_equal_one(tmp_path):
    x = np.random.default_rng(5).normal(size=(1050, 8)).astype(np.float32)  # 17 batches: 9 and 8 per rank
    one = measure(ArraySource([x], 64), sparse_sae(8, 30), MeasureConfig(bootstrap=8, widths=[1, 2]), progress=False)
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path), x), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.glob("c.rank*")) == ["c.rank0-of-2.safetensors", "c.rank1-of-2.safetensors"]
    for rank in range(2):
        two = FeatureStats.load(tmp_path / f"stats{rank}.safetensors")
        assert two.n_tokens == one.stats.n_tokens
        np.testing.assert_array_equal(two.fire_count, one.stats.fire_count)
        np.testing.assert_array_equal(two.act_max, one.stats.act_max)
        np.testing.assert_allclose(two.act_sq_sum, one.stats.act_sq_sum, rtol=1e-13)
        np.testing.assert_array_equal(two.margin_count, one.stats.margin_count)
        for name, a in count_features(two, sparse_sae(8, 30), [Estimator("paper"), Estimator()]).items():
            b = one.estimators[name]["measurement"]
            assert (a.n_features, a.mean_l0, a.alpha) == (b.n_features, b.mean_l0, b.alpha)
        np.testing.assert_array_equal(np.load(tmp_path / f"hist{rank}.npy"), one.feature_histograms.counts)
        iv = json.loads((tmp_path / f"intervals{rank}.json").read_text())
        assert iv["n_features"] == one.intervals["n_features"]
        assert iv["floors"][0]["low"] == pytest.approx(one.intervals["floors"][0]["low"], rel=1e-12)


def test_a_family_measured_in_one_pass_equals_each_sae_alone(tmp_path):
    x = np.random.default_rng(21).normal(size=(900, 8)).astype(np.float32)
    saes = [sparse_sae(8, 20, seed=0), sparse_sae(8, 40, seed=1, bias=-0.9), sparse_sae(8, 20, seed=2)]
    cfg = MeasureConfig(bootstrap=6, widths=[1, 2], checkpoint=tmp_path / "c.safetensors", checkpoint_every=200)
    reads = []
    source = ArraySource([x], 100)
    family = measure_family(source, saes, cfg, progress=False, on_batch=lambda i, rows: reads.append(i))
    assert reads == list(range(9))  # every batch read once for all three
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"c.sae{i}.safetensors" for i in range(3)]
    for sae, got in zip(saes, family):
        alone = measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=6, widths=[1, 2]), progress=False)
        assert got.stats == alone.stats
        assert got.intervals == alone.intervals
        assert got.measurement.n_features == alone.measurement.n_features
    resumed = measure_family(source, saes, dataclasses.replace(cfg, resume=True), progress=False)
    assert all(a.stats == b.stats for a, b in zip(resumed, family))
    with pytest.raises(ValueError, match="at least one SAE"):
        measure_family(source, [], cfg)


def test_checkpoint_with_a_bad_margin_flag_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    x = np.random.default_rng(14).normal(size=(300, 8)).astype(np.float32)
    sae = sparse_sae(8, 20)
    ckpt = tmp_path / "c.safetensors"
    measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=2, checkpoint=ckpt), progress=False)
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(ckpt))
    tensors["margin_known"] = torch.ones(2, dtype=torch.bool)
    save_file(tensors, str(ckpt), metadata=meta)
    with pytest.raises(CheckpointError, match="margin_known must be a bool scalar"):
        measure(ArraySource([x], 100), sae, MeasureConfig(bootstrap=2, checkpoint=ckpt, resume=True), progress=False)
