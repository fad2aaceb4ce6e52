"""SAEs of SAELens and EleutherAI sparsify: their directories, and their objects converted in memory.

The hand-written directories follow each library's documented layout and always run; the tests
that let the library itself write the checkpoint, or build the SAE object, run where sae-lens /
eai-sparsify are installed (``pip install sae-lens eai-sparsify``).
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pyfloor.sae import load_sae


def rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def write_saelens(path, arch, d=10, m=30, k=None, apply_b_dec=True, rescale=False, extra=None):
    path.mkdir()
    t = {
        "W_enc": rand(d, m, seed=1),
        "b_enc": rand(m, seed=2) * 0.1,
        "W_dec": rand(m, d, seed=3),
        "b_dec": rand(d, seed=4) * 0.1,
    }
    if arch == "jumprelu":
        t["threshold"] = rand(m, seed=5).abs() * 0.3
    save_file(t, str(path / "sae_weights.safetensors"))
    cfg = {
        "architecture": arch,
        "d_in": d,
        "d_sae": m,
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        **({"k": k, "rescale_acts_by_decoder_norm": rescale} if k else {}),
        **(extra or {}),
    }
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t


def saelens_encode(t, arch, x, k=None, apply_b_dec=True, rescale=False):
    """SAELens' encode, written out from its documented formulas."""
    pre = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    if rescale:
        pre = pre * t["W_dec"].norm(dim=-1)
    if arch == "standard":
        return torch.relu(pre)
    if arch == "jumprelu":
        return torch.relu(pre) * (pre > t["threshold"])
    val, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, val.relu())


@pytest.mark.parametrize(
    "arch, k, apply_b_dec, rescale",
    [
        ("standard", None, True, False),
        ("standard", None, False, False),
        ("jumprelu", None, True, False),
        ("topk", 4, True, False),
        ("topk", 4, True, True),
    ],
)
def test_saelens_layout(tmp_path, arch, k, apply_b_dec, rescale):
    t = write_saelens(tmp_path / "sae", arch, k=k, apply_b_dec=apply_b_dec, rescale=rescale)
    sae = load_sae(tmp_path / "sae")
    x = rand(64, 10, seed=9)
    torch.testing.assert_close(sae.encode(x), saelens_encode(t, arch, x, k, apply_b_dec, rescale), rtol=1e-5, atol=1e-5)


def test_saelens_unsupported_architecture_is_named(tmp_path):
    write_saelens(tmp_path / "sae", "gated")
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path / "sae")


def test_sparsify_layout(tmp_path):
    d, m, k = 10, 30, 5
    (tmp_path / "sae").mkdir()
    t = {
        "encoder.weight": rand(m, d, seed=1),
        "encoder.bias": rand(m, seed=2),
        "W_dec": rand(m, d, seed=3),
        "b_dec": rand(d, seed=4),
    }
    save_file(t, str(tmp_path / "sae" / "sae.safetensors"))
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({"activation": "topk", "k": k, "num_latents": m, "d_in": d}))
    sae = load_sae(tmp_path / "sae")
    x = rand(50, d, seed=8)
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    val, idx = pre.topk(k, dim=-1)
    torch.testing.assert_close(sae.encode(x), torch.zeros_like(pre).scatter(-1, idx, val), rtol=1e-5, atol=1e-5)


def test_not_an_sae_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an SAE directory"):
        load_sae(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "missing")


# -- checkpoints written by the libraries themselves ---------------------------------------------------
def dense_from_topk(acts, idx, m):
    return torch.zeros(acts.shape[0], m).scatter(-1, idx, acts)


def test_checkpoint_written_by_sparsify(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    coder = sparsify.SparseCoder(12, sparsify.SparseCoderConfig(num_latents=48, k=6))
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
    coder.save_to_disk(tmp_path / "layers.7")
    ours = load_sae(tmp_path / "layers.7")
    x = torch.randn(40, 12)
    out = coder.encode(x)
    torch.testing.assert_close(ours.encode(x), dense_from_topk(out.top_acts, out.top_indices, 48), rtol=1e-5, atol=1e-5)
    assert ours.metadata["hook_name"] == "layers.7"  # sparsify names each hookpoint's directory by it


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_checkpoint_written_by_saelens(tmp_path, arch):
    sae_lens = pytest.importorskip("sae_lens")
    cls, cfg_cls = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
    }[arch]
    theirs = cls(cfg_cls(d_in=12, d_sae=48, **({"k": 6} if arch == "topk" else {})))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.randn(p.shape).abs() * 0.2 if name == "threshold" else torch.randn(p.shape) * 0.5)
    theirs.save_model(tmp_path / "sae")
    ours = load_sae(tmp_path / "sae")
    x = torch.randn(40, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)


# -- library objects converted in memory ----------------------------------------------------------------
def randomised(module, seed=0):
    """``module`` with every parameter drawn afresh (thresholds positive), so that no weight is its default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r.abs() * 0.2 if "threshold" in name else r * 0.5)
    return module


def saelens_sae(arch, *, training=False, **extra):
    sae_lens = pytest.importorskip("sae_lens")
    prefix = {"standard": "Standard", "jumprelu": "JumpReLU", "topk": "TopK"}[arch]
    kind = "Training" if training else ""
    cls = getattr(sae_lens, f"{prefix}{kind}SAE")
    cfg_cls = getattr(sae_lens, f"{prefix}{kind}SAEConfig")
    return randomised(cls(cfg_cls(d_in=12, d_sae=48, **({"k": 6} if arch == "topk" else {}), **extra)))


def sparsify_sae():
    sparsify = pytest.importorskip("sparsify")
    return randomised(sparsify.SparseCoder(12, sparsify.SparseCoderConfig(num_latents=48, k=6)))


def their_latents(obj, x):
    """The library's own dense latents of x."""
    with torch.no_grad():
        out = obj.encode(x)
    return out if isinstance(out, torch.Tensor) else dense_from_topk(out.top_acts, out.top_indices, 48)


SAELENS_CASES = [
    ("standard", False, {}),
    ("standard", False, {"apply_b_dec_to_input": False}),
    ("jumprelu", False, {}),
    ("topk", False, {}),
    ("topk", False, {"rescale_acts_by_decoder_norm": True}),
    ("standard", True, {}),
    ("jumprelu", True, {}),
    ("topk", True, {}),  # a training top-k SAE rescales by the decoder norm by default
]


@pytest.mark.parametrize("arch, training, extra", SAELENS_CASES)
def test_saelens_object_encodes_as_the_library_does(arch, training, extra):
    from pyfloor.interop import as_sae

    theirs = saelens_sae(arch, training=training, **extra)
    ours = as_sae(theirs)
    x = rand(64, 12, seed=11)
    torch.testing.assert_close(ours.encode(x), their_latents(theirs, x), rtol=1e-6, atol=1e-6)
    assert ours.metadata["library"] == "saelens" and ours.metadata["architecture"] == arch


def test_sparsify_object_encodes_as_the_library_does():
    from pyfloor.interop import as_sae

    theirs = sparsify_sae()
    ours = as_sae(theirs)
    x = rand(64, 12, seed=12)
    torch.testing.assert_close(ours.encode(x), their_latents(theirs, x), rtol=1e-6, atol=1e-6)
    assert (ours.activation, ours.k, ours.metadata["library"]) == ("topk", 6, "sparsify")


@pytest.mark.parametrize("make", [lambda: saelens_sae("jumprelu"), lambda: saelens_sae("topk"), sparsify_sae])
def test_encode_stats_takes_library_objects(make):
    from pyfloor.encode import StatsAccumulator, encode_stats
    from pyfloor.interop import as_sae

    theirs = make()
    x = rand(200, 12, seed=13)
    direct, _ = encode_stats(x, theirs)
    converted, _ = encode_stats(x, as_sae(theirs))
    z = their_latents(theirs, x)
    assert direct.fire_count.sum() > 0
    np.testing.assert_array_equal(direct.fire_count, (z > 0).sum(0).numpy())
    np.testing.assert_array_equal(direct.fire_count, converted.fire_count)
    np.testing.assert_allclose(direct.act_sum, z.double().sum(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(direct.act_sq_sum, converted.act_sq_sum, rtol=1e-6, atol=1e-6)
    acc = StatsAccumulator(theirs)
    acc.update(x[:120])
    acc.update(x[120:])
    np.testing.assert_array_equal(acc.result().fire_count, direct.fire_count)


@pytest.mark.parametrize("make", [lambda: saelens_sae("standard"), sparsify_sae])
def test_measure_takes_library_objects(make):
    from pyfloor.interop import as_sae
    from pyfloor.measure import MeasureConfig, measure
    from pyfloor.sources import ArraySource

    theirs = make()
    x = rand(600, 12, seed=14)
    config = MeasureConfig(bootstrap=4, histograms=False, estimator="paper")
    direct = measure(ArraySource([x], 100), theirs, config, progress=False)
    converted = measure(ArraySource([x], 100), as_sae(theirs), config, progress=False)
    np.testing.assert_array_equal(direct.stats.fire_count, converted.stats.fire_count)
    assert direct.stats.fire_count.sum() > 0 and direct.intervals == converted.intervals
    assert direct.provenance["sae"]["metadata"]["library"] in ("saelens", "sparsify")


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_saelens_state_dict_and_cfg(arch):
    from pyfloor.interop import as_sae, from_saelens

    theirs = saelens_sae(arch, training=False)
    cfg = json.loads(json.dumps(theirs.cfg.to_dict()))  # as cfg.json holds it
    ours = from_saelens(theirs.state_dict(), cfg)
    x = rand(30, 12, seed=14)
    torch.testing.assert_close(ours.encode(x), as_sae(theirs).encode(x), rtol=0, atol=0)


def test_sparsify_state_dict_and_cfg_with_its_hookpoint():
    from pyfloor.interop import from_sparsify, hook_site

    theirs = sparsify_sae()
    cfg = {**theirs.cfg.to_dict(), "d_in": 12}
    ours = from_sparsify(theirs.state_dict(), cfg, hookpoint="layers.5")
    x = rand(30, 12, seed=15)
    torch.testing.assert_close(ours.encode(x), their_latents(theirs, x), rtol=1e-6, atol=1e-6)
    assert ours.metadata["hook_name"] == "layers.5" and hook_site(ours) == (5, "resid")


def test_saelens_object_records_its_hook_and_model():
    from pyfloor.interop import as_sae, check_hook, hook_site

    theirs = saelens_sae("standard")
    theirs.cfg.metadata.hook_name = "blocks.4.hook_resid_pre"
    theirs.cfg.metadata.model_name = "pythia-70m"
    ours = as_sae(theirs)
    assert (ours.metadata["hook_name"], ours.metadata["model_name"]) == ("blocks.4.hook_resid_pre", "pythia-70m")
    assert hook_site(theirs) == (3, "resid")
    assert check_hook(theirs, 3, "resid") is None
    with pytest.raises(ValueError, match="--ignore-hook"):
        check_hook(theirs, 4, "resid")


def test_converted_library_sae_keeps_its_metadata_through_a_file(tmp_path):
    from pyfloor.interop import as_sae
    from pyfloor.sae import SAE

    ours = as_sae(saelens_sae("topk"))
    ours.save(tmp_path / "sae.safetensors")
    back = SAE.load(tmp_path / "sae.safetensors")
    assert back.metadata == ours.metadata and back.metadata["config"]["k"] == 6


def test_library_state_dict_needs_its_config_and_objects_take_none():
    from pyfloor.interop import from_saelens, from_sparsify

    theirs = saelens_sae("standard")
    with pytest.raises(TypeError, match="needs its config"):
        from_saelens(theirs.state_dict())
    with pytest.raises(TypeError, match="carries its own config"):
        from_saelens(theirs, {"architecture": "standard"})
    with pytest.raises(TypeError, match="expected a sparsify SAE object"):
        from_sparsify(theirs)


def test_unsupported_saelens_architecture_is_named():
    sae_lens = pytest.importorskip("sae_lens")
    from pyfloor.interop import as_sae

    gated = randomised(sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=12, d_sae=48)))
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        as_sae(gated)


def test_measurement_from_a_sparsity_file_the_saelens_trainer_writes(tmp_path):
    pytest.importorskip("sae_lens")
    from sae_lens.constants import SPARSITY_FILENAME
    from sae_lens.training.sae_trainer import _log_feature_sparsity

    from pyfloor.interop import measurement_from_sparsity

    n_samples = 4096
    act_freq_scores = torch.tensor([4000.0, 1000.0, 300.0, 41.0, 1.0, 0.0] * 8)  # fire counts over the window
    save_file({"sparsity": _log_feature_sparsity(act_freq_scores / n_samples)}, str(tmp_path / SPARSITY_FILENAME))
    m = measurement_from_sparsity(tmp_path, n_tokens=n_samples, alive_threshold=1e-3)
    freq = act_freq_scores.double() / n_samples
    assert m.n_features == int((freq > 1e-3).sum()) == 32
    assert m.mean_l0 == pytest.approx(float(freq.sum()), rel=1e-6)
    assert m.n_tokens == n_samples and m.importances is None
