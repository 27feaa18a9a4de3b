"Hungarian matching of SAE features (saetrack.matching): permutations, noise, partial and encoder matching."
import time
import numpy as np
import pytest
import torch
from saetrack.core import SaetrackError
from saetrack.matching import (cosine_matrix, feature_directions, identity_similarity, match_features,
                               similarity_stats)
from saetrack.convergence import spread
from saetrack.sae import make_sae


def _dictionary(n=256, d=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_recovers_permutation_exactly():
    W = _dictionary()
    perm = np.random.default_rng(1).permutation(len(W))
    m = match_features(W, W[perm])                  # B's row j is A's row perm[j]
    assert (m.mapping()[perm] == np.arange(len(W))).all()
    assert np.allclose(m.sim, 1.0)
    assert not m.is_identity().all()


def test_permutation_of_a_real_sae():
    sae = make_sae(32, 128, seed=3)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        W = sae.W_dec[perm].clone()
    m = match_features(sae, W)
    assert (m.mapping()[perm.numpy()] == np.arange(128)).all()


def test_recovers_noisy_permutation_nearly():
    W = _dictionary(512, 64)
    rng = np.random.default_rng(2)
    perm = rng.permutation(512)
    noise = rng.standard_normal(W.shape) * np.linalg.norm(W, axis=1, keepdims=True) / np.sqrt(64)
    m = match_features(W, W[perm] + 0.4 * noise)     # true-partner cosine ~0.93
    assert (m.mapping()[perm] == np.arange(512)).mean() >= 0.95
    assert similarity_stats(m.sim)["median"] > 0.85


def test_partial_matching_different_widths():
    W = _dictionary(300, 64)
    perm = np.random.default_rng(3).permutation(300)
    small = W[perm[:120]]                            # a narrower SAE holding 120 of the 300 features
    m = match_features(small, W)                     # narrow -> wide: every narrow feature matched
    assert len(m.rows) == 120 and (m.cols == perm[:120]).all() and np.allclose(m.sim, 1)
    m2 = match_features(W, small)                    # wide -> narrow: 180 wide features stay unmatched
    assert len(m2.rows) == 120 and (m2.mapping() >= 0).sum() == 120
    assert (m2.mapping()[perm[:120]] == np.arange(120)).all()


def test_encoder_matching_uses_encoder_columns():
    sae = make_sae(32, 64, seed=5)
    other = make_sae(32, 64, seed=6)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        other.W_enc.copy_(sae.W_enc[:, perm] * 3.0)                  # scaled: cosine ignores norms
        other.W_dec.copy_(torch.randn_like(other.W_dec))           # decoders unrelated
    me = match_features(sae, other, by="encoder")
    assert (me.mapping()[perm.numpy()] == np.arange(64)).all() and np.allclose(me.sim, 1)
    md = match_features(sae, other, by="decoder")
    assert md.sim.mean() < 0.9                                      # the decoder view does not see it
    with pytest.raises(SaetrackError): feature_directions(sae, by="bias")


def test_fast_and_identity():
    W = _dictionary(1024, 128)
    perm = np.random.default_rng(4).permutation(1024)
    t = time.time()
    m = match_features(W, W[perm])
    assert time.time() - t < 2.0
    assert (m.mapping()[perm] == np.arange(1024)).all()
    assert np.allclose(identity_similarity(W, W), 1) and cosine_matrix(W[:5], W[:7]).shape == (5, 7)
    with pytest.raises(SaetrackError): identity_similarity(W, W[:10])


def test_spread():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 750, 1000, 1250, 1500, 1750, 2000]
    assert spread(steps, 4) == [0, 16, 750, 2000]
    assert spread([0, 5], 4) == [0, 5]


def _planted_layers(seed=0):
    "One shared dictionary seen by three 'layers' (a rotation, then a large change) and by variants with their own noise."
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((256, 64))
    R = np.eye(64); R[:2, :2] = [[np.cos(0.9), -np.sin(0.9)], [np.sin(0.9), np.cos(0.9)]]
    bases = {"L0": D, "L1": D @ R.T, "L2": D @ R.T + 2.0 * rng.standard_normal(D.shape)}
    noise = {"A": 0.0, "B": 0.2, "half": 0.3, "dataset": 0.5, "topk": 0.8}
    dicts = {}
    for h, base in bases.items():
        for v, s in noise.items():
            X = base + s * rng.standard_normal(D.shape)
            dicts[(h, v)] = X[:128] if v == "half" else X
    return dicts, {k: np.ones(len(v), bool) for k, v in dicts.items()}


def test_factor_table_ranks_planted_factors():
    from saetrack.matching import FACTORS, factor_table
    dicts, live = _planted_layers()
    T = factor_table(dicts, live, ["L0", "L1", "L2"])
    med = {h: {f: r["live"]["median"] for f, r in T[h].items()} for h in T}
    for h in T:                                  # ranked by the planted noise: seed 0.2 < width 0.3 < dataset 0.5 < type 0.8
        assert med[h]["seed"] > med[h]["width"] > med[h]["dataset"] > med[h]["type"] > 0.5
    assert med["L0"]["next layer"] > 0.9 > 0.6 > med["L1"]["next layer"]     # the shared dictionary is matched across layers
    assert set(T["L2"]) == set(FACTORS) and T["L0"]["width"]["all"]["n"] == 128
    # a dead latent drops out of the live statistics only
    live[("L0", "B")][:128] = False
    assert factor_table(dicts, live, ["L0"])["L0"]["seed"]["live"]["n"] == 128


def test_matched_layout_marks_planted_pairs():
    from saetrack.matching import matched_layout
    rng = np.random.default_rng(1)
    A = rng.standard_normal((256, 64))
    B = np.vstack([A[:100] + 0.05 * rng.standard_normal((100, 64)), rng.standard_normal((156, 64))])
    la, lb = np.ones(256, bool), np.ones(256, bool); lb[-6:] = False
    first2 = lambda X, seed: X[:, :2]            # any embedding: the marks do not depend on it
    L = matched_layout(A, B, la, lb, embed=first2)
    assert len(L["x"]) == len(L["matched"]) == 506 and L["sae"].count(0) == 256
    assert sum(L["matched"]) == 200 and all(L["matched"][:100]) and not any(L["matched"][100:256])
    assert min(L["cos"][:100]) > 0.9 and max(L["cos"][100:256]) < 0.7
