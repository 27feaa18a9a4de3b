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
