"""pyfloor.sae: the reference maps, files and training."""

import pytest
import torch

from pyfloor.sae import SAE, TrainConfig, topk_codes, train_sae, train_sae_family


def random_sae(d=12, m=40, activation="relu", k=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d, m, activation, k=k)
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(m, generator=g) * 0.3)
    return sae


def test_relu_encode_matches_formula():
    sae = random_sae()
    x = torch.randn(5, 7, 12)
    z = sae.encode(x)
    expected = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(z, expected)
    assert z.shape == (5, 7, 40)
    torch.testing.assert_close(sae(x).x_hat, z @ sae.W_dec + sae.b_dec)


def test_jumprelu_zeroes_below_threshold():
    sae = random_sae(activation="jumprelu")
    x = torch.randn(50, 12)
    pre = sae.pre_activations(x)
    z = sae.encode(x)
    assert torch.all((z == 0) | (pre > sae.threshold))
    torch.testing.assert_close(z[pre > sae.threshold], pre[pre > sae.threshold])


def test_topk_keeps_k_largest_with_lowest_index_on_ties():
    pre = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [-1.0, -2.0, 0.5, -3.0, 0.5]])
    idx, val = topk_codes(pre, 2)
    assert idx.tolist() == [[1, 2], [2, 4]]
    assert val.tolist() == [[3.0, 3.0], [0.5, 0.5]]
    idx, val = topk_codes(pre, 3)
    assert idx[1].tolist() == [2, 4, 0] and val[1].tolist() == [0.5, 0.5, 0.0]  # ReLU on selected


def test_topk_sae_has_at_most_k_active():
    sae = random_sae(activation="topk", k=5)
    z = sae.encode(torch.randn(100, 12))
    assert int((z > 0).sum(-1).max()) <= 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activation="gelu"), "activation must be"),
        (dict(activation="topk"), "needs 1 <= k"),
        (dict(activation="topk", k=41), "needs 1 <= k"),
        (dict(activation="relu", k=3), "only meaningful"),
    ],
)
def test_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAE(12, 40, **kwargs)


def test_encode_rejects_wrong_width_and_dtype():
    sae = random_sae()
    with pytest.raises(ValueError, match="width 11 but the SAE expects d_in = 12"):
        sae.encode(torch.randn(3, 11))
    with pytest.raises(ValueError, match="floating point"):
        sae.encode(torch.ones(3, 12, dtype=torch.int64))


@pytest.mark.parametrize("activation, k", [("relu", None), ("jumprelu", None), ("topk", 4)])
def test_save_load_round_trip(tmp_path, activation, k):
    sae = random_sae(activation=activation, k=k)
    path = tmp_path / "sae.safetensors"
    sae.save(path)
    back = SAE.load(path)
    assert back.config() == sae.config()
    x = torch.randn(20, 12)
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=0, atol=0)


def test_load_refuses_foreign_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a pyfloor SAE"):
        SAE.load(path)


def sparse_data(n, d=16, n_feat=32, p=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feat, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    coeff = torch.rand(n, n_feat, generator=g) * (torch.rand(n, n_feat, generator=g) < p)
    return coeff @ dirs


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 4)])
def test_training_learns_a_sparse_code(activation, k):
    data = sparse_data(4096)
    batches = list(data.split(256))
    cfg = TrainConfig(n_latents=64, activation=activation, k=k, l1_coeff=3e-3, lr=3e-3, steps=400, dead_tokens=20_000)
    sae, hist = train_sae(batches, 16, cfg)
    assert hist[-1].fvu < 0.25 < hist[0].fvu
    assert hist[-1].l0 < 20
    norms = sae.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    sae2, hist2 = train_sae(batches, 16, cfg)
    assert [h.loss for h in hist2] == [h.loss for h in hist]  # seeded: same numbers


def test_training_stream_too_short():
    cfg = TrainConfig(n_latents=8, steps=5)
    with pytest.raises(ValueError, match="ended after 1 batches, before the 5 training steps"):
        train_sae(iter([torch.randn(4, 3)]), 3, cfg)
    with pytest.raises(ValueError, match="empty"):
        train_sae([], 3, cfg)


def test_one_pass_when_steps_is_none():
    cfg = TrainConfig(n_latents=8, steps=None)
    _, hist = train_sae(iter(torch.randn(7, 16, 3)), 3, cfg)
    assert len(hist) == 7


def test_a_family_trained_from_one_pass_equals_each_member_trained_alone():
    g = torch.Generator().manual_seed(11)
    batches = [torch.randn(64, 6, generator=g) for _ in range(7)]
    configs = [
        TrainConfig(n_latents=12, l1_coeff=0.1, lr=1e-2, steps=5, seed=0),
        TrainConfig(n_latents=24, l1_coeff=0.3, lr=1e-2, steps=9, seed=1),  # cycles the batches
        TrainConfig(n_latents=12, activation="topk", k=2, lr=1e-2, steps=3, seed=2),
    ]
    seen = []
    family = train_sae_family(batches, 6, configs, on_step=lambda i, rec: seen.append((i, rec.step)))
    for i, (config, (sae, history)) in enumerate(zip(configs, family)):
        alone, alone_history = train_sae(batches, 6, config)
        assert len(history) == config.steps and history == alone_history
        for name, value in alone.state_dict().items():
            assert torch.equal(sae.state_dict()[name], value), (i, name)
    assert sorted(seen) == sorted((i, s) for i, c in enumerate(configs) for s in range(c.steps))
    with pytest.raises(ValueError, match="steps"):
        train_sae_family(batches, 6, [TrainConfig(n_latents=4, steps=None)])
    with pytest.raises(ValueError, match="at least one"):
        train_sae_family(batches, 6, [])
