"""pyfloor.features: counting a teacher's features from an SAE."""

import numpy as np
import pytest
import torch

from pyfloor.encode import encode_stats
from pyfloor.features import Estimator, count_features, decoder_pairs, feature_groups, sae_health
from pyfloor.sae import SAE
from pyfloor.stats import FeatureStats, Measurement


def _sae_with_directions(directions: np.ndarray, bias: float | np.ndarray) -> SAE:
    """A ReLU SAE whose latents read and write the given unit directions [m, d], b_dec = 0."""
    m, d = directions.shape
    sae = SAE(d, m, "relu")
    with torch.no_grad():
        u = torch.as_tensor(directions, dtype=torch.float32)
        u = u / u.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(u)
        sae.W_enc.copy_(u.T)
        sae.b_enc.copy_(torch.as_tensor(np.broadcast_to(bias, (m,)).copy(), dtype=torch.float32))
        sae.b_dec.zero_()
    return sae


def test_decoder_pairs_equal_the_float64_cosines_above_the_threshold():
    g = np.random.default_rng(0)
    base = g.normal(size=(40, 16))
    dirs = np.concatenate([base, base[:10] + 0.2 * g.normal(size=(10, 16))])  # 10 near-copies
    sae = _sae_with_directions(dirs, -0.1)
    w = sae.W_dec.detach().double().numpy()
    u = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = u @ u.T
    for threshold in (0.5, 0.9, 0.97):
        i, j = np.nonzero(np.triu(cos > threshold, 1))
        found = decoder_pairs(sae, threshold, block=7)  # blocks that do not divide m
        np.testing.assert_array_equal(found.pairs, np.stack([i, j], 1))
        np.testing.assert_allclose(found.cosines, cos[i, j], rtol=1e-6)
    assert 0 < len(decoder_pairs(sae, 0.9).pairs) < 50 * 49 // 2


def test_feature_groups_are_the_connected_components_of_alive_latents():
    g = np.random.default_rng(1)
    n = 60
    pairs = np.unique(np.sort(g.integers(0, n, size=(45, 2)), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    alive = g.random(n) > 0.2
    label = feature_groups(n, pairs, alive)
    # naive reference: breadth-first search over alive latents
    adj = {i: set() for i in range(n)}
    for a, b in pairs:
        if alive[a] and alive[b]:
            adj[a].add(b)
            adj[b].add(a)
    for start in range(n):
        seen, todo = {start}, [start]
        while todo:
            for v in adj[todo.pop()] - seen:
                seen.add(v)
                todo.append(v)
        assert label[start] == min(seen)
    assert len(set(label[alive])) < alive.sum()  # some latents merged


def _stream(n_tokens: int, features: np.ndarray, p_active: float, seed: int) -> np.ndarray:
    """Tokens x = Σ_i a_i·u_i with a_i ~ U(0, 1) on a fraction ``p_active`` of tokens, else 0."""
    g = np.random.default_rng(seed)
    on = g.random((n_tokens, features.shape[0])) < p_active
    return ((on * g.random(on.shape)) @ features).astype(np.float32)


def test_merged_estimator_counts_split_features_once_and_corrects_the_cut_frequency():
    """Six orthogonal features, each active on 20 % of tokens with magnitude U(0, 1). The SAE reads
    each with one latent and a bias of −0.25 (so it misses a quarter of each feature's tokens),
    reads two features twice more (split latents) and adds four near-dead latents."""
    d, p = 8, 0.2
    feats = np.eye(d)[:6]
    g = np.random.default_rng(2)
    split = feats[[0, 0, 1]] + 0.01 * g.normal(size=(3, d))  # cosine ≈ 1 with their feature
    junk = g.normal(size=(4, d))
    sae = _sae_with_directions(np.concatenate([feats, split, junk]), np.r_[np.full(9, -0.25), np.full(4, -0.9)])
    x = torch.from_numpy(_stream(200_000, feats, p, seed=3))
    stats, _ = encode_stats(x, sae)
    assert stats.margin_count is not None and stats.margin_count[:6].sum() > 0
    assert (stats.fire_count[9:] > 0).any()  # the junk latents are alive …
    paper, merged = count_features(stats, sae, [Estimator("paper"), Estimator()]).values()
    assert paper.n_features > 9  # … so the paper counts them, and every split latent
    assert merged.n_features == 6
    reads = sae.W_dec.detach().abs().argmax(1).numpy()  # the feature each latent reads
    assert sorted(reads[merged.feature_ids].tolist()) == list(range(6))  # one latent per feature
    # each feature fires on p·(1 − 0.25) of tokens; the band (0.25, 0.5] adds back p·0.25
    assert 1 - paper.alpha < 1 - merged.alpha
    assert merged.alpha == pytest.approx(1 - p, abs=0.005)
    uncorrected = count_features(stats, sae, Estimator(margin=False))["merged"]
    assert uncorrected.alpha == pytest.approx(1 - 0.75 * p, abs=0.005)
    assert isinstance(merged, Measurement) and merged.notes[0].startswith("merged")


def test_mass_cut_drops_the_importance_tail():
    d = 10
    sae = _sae_with_directions(np.eye(d), -0.01)
    weights = np.r_[np.ones(5), np.full(5, 0.1)]  # five strong features, five weak ones
    x = torch.from_numpy(_stream(50_000, np.eye(d) * weights[:, None], 0.3, seed=4))
    stats, _ = encode_stats(x, sae)
    count = {q: count_features(stats, sae, Estimator(mass=q))["merged"].n_features for q in (0.9, 0.99, 0.9999)}
    assert count[0.9] == 5 and count[0.9999] == 10 and 5 <= count[0.99] <= 10


def test_estimates_from_sums_are_the_measurement_of_the_stats():
    g = np.random.default_rng(5)
    sae = _sae_with_directions(g.normal(size=(30, 12)), -0.3)
    x = torch.from_numpy(_stream(5000, g.normal(size=(30, 12)) / 3, 0.1, seed=6))
    stats, _ = encode_stats(x, sae)
    bound = Estimator().bind(sae)
    est = bound.estimate(stats.n_tokens, stats.fire_count, stats.act_sq_sum, stats.margin_count)
    m = bound.measurement(stats)
    np.testing.assert_array_equal(est.feature_ids, m.feature_ids)
    assert (est.mean_l0, est.alpha) == (m.mean_l0, m.alpha)
    # the paper estimator is Measurement.from_stats
    p = count_features(stats, sae, Estimator("paper"))["paper"]
    q = Measurement.from_stats(stats)
    assert (p.n_features, p.mean_l0, p.alpha) == (q.n_features, q.mean_l0, q.alpha)


def test_topk_encodes_are_not_margin_corrected():
    g = np.random.default_rng(7)
    sae = _sae_with_directions(g.normal(size=(20, 8)), -0.2)
    x = torch.from_numpy(_stream(3000, np.eye(8), 0.3, seed=8))
    stats, _ = encode_stats(x, sae, activation="topk", k=2)
    assert stats.margin_count is not None and stats.margin_count.sum() == 0
    m = Estimator().bind(sae, "topk").measurement(stats)
    assert m.mean_l0 == pytest.approx(stats.fire_count[m.feature_ids].sum() / stats.n_tokens)


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="estimator"):
        Estimator("alive")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cosine"):
        Estimator(cosine=1.0)
    with pytest.raises(ValueError, match="mass"):
        Estimator(mass=0.0)
    sae = _sae_with_directions(np.eye(4), -0.1)
    with pytest.raises(ValueError, match="no tokens"):
        Estimator().bind(sae).measurement(FeatureStats.empty(4))
    with pytest.raises(ValueError, match="latents"):
        Estimator().bind(sae).measurement(FeatureStats.empty(5))
    with pytest.raises(ValueError, match="distinct"):
        count_features(FeatureStats.empty(4), sae, [Estimator(), Estimator()])
    with pytest.raises(ValueError, match="cannot serve"):
        Estimator(cosine=0.8).bind(sae, pairs=decoder_pairs(sae, 0.9))


def test_health_check_names_dead_duplicate_and_unresolved_sae():
    g = np.random.default_rng(9)
    dirs = g.normal(size=(16, 8))
    dirs[8:] = dirs[:8] + 1e-3 * g.normal(size=(8, 8))  # every latent has a near-copy
    sae = _sae_with_directions(dirs, np.r_[np.full(4, -0.1), np.full(12, -50.0)])  # 12 never fire
    x = torch.from_numpy(_stream(2000, np.eye(8), 0.3, seed=10))
    stats, _ = encode_stats(x, sae)
    h = sae_health(sae, stats, fvu_history=np.linspace(1.0, 0.2, 50))
    assert h.dead == 12 and h.duplicates == 16 and not h.resolved and h.fvu_trend > 0.05
    assert len(h.warnings) == 4 and not h.ok
    good = _sae_with_directions(np.eye(8), -0.1)
    stats, _ = encode_stats(torch.from_numpy(_stream(20_000, np.eye(8), 0.3, seed=11)), good)
    h = sae_health(good, stats, fvu_history=np.r_[np.linspace(1, 0.2, 40), np.full(60, 0.2)], alive_threshold=1e-3)
    assert h.ok and h.dead == 0 and h.duplicates == 0 and h.fvu_trend == pytest.approx(0.0)
