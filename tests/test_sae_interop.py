"""Loading SAEs written by SAELens and EleutherAI sparsify.

The hand-written directories follow each library's documented layout and always run; the tests
that let the library itself write the checkpoint run where sae-lens / eai-sparsify are installed
(``pip install sae-lens eai-sparsify``).
"""

import json

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
    coder.save_to_disk(tmp_path / "layer")
    ours = load_sae(tmp_path / "layer")
    x = torch.randn(40, 12)
    out = coder.encode(x)
    torch.testing.assert_close(ours.encode(x), dense_from_topk(out.top_acts, out.top_indices, 48), rtol=1e-5, atol=1e-5)


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
