"Mean pairwise similarity, progress measure, null floor, formation step, feature choice, UMAP panels (saetrack.formation)."

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from saetrack.core import SaetrackError
import saetrack.formation as fd


pytestmark = pytest.mark.usefixtures("one_thread")


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)

def cluster(rng, n, d, spread):
    """n vectors around one random centre with relative isotropic noise ``spread``."""
    c = unit(rng.standard_normal(d))
    return c + spread * rng.standard_normal((n, d)) / math.sqrt(d)

def ref_sim(a, b, measure):
    if measure == "cosine":
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))
    if measure == "jaccard":
        sa, sb = set(np.flatnonzero(a)), set(np.flatnonzero(b))
        u = sa | sb
        return len(sa & sb) / len(u) if u else 0.0
    return float(np.minimum(a, b).sum() / (np.maximum(a, b).sum() + 1e-8))

def ref_mean_pairwise(S, measure):
    n = len(S)
    tot = sum(ref_sim(S[i], S[j], measure) for i in range(n) for j in range(n) if i != j)
    return tot / (n * (n - 1))

@pytest.mark.parametrize("measure", fd.MEASURES)
def test_mean_pairwise_matches_double_loop(measure):
    rng = np.random.default_rng(1)
    X = np.maximum(rng.standard_normal((2, 3, 6, 20)) - 0.5, 0)      # sparse non-negative codes
    X[0, 0, 2] = 0.0                                                  # an all-zero (dead) code
    X[0, 1, :2] = 0.0                                                 # two zero codes in a set
    if measure == "cosine":
        X = X - 0.3 * (X > 0) + 0.1 * rng.standard_normal(X.shape) * (X > 0)
    got = fd.mean_pairwise(X, measure, batch=4)
    want = np.array([[ref_mean_pairwise(X[i, j], measure) for j in range(3)] for i in range(2)])
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)

def test_mean_pairwise_float32_wjaccard_large_d_matches():
    rng = np.random.default_rng(2)
    X = np.maximum(rng.standard_normal((5, 25, 1024)) - 1.0, 0).astype(np.float32)
    got = fd.mean_pairwise(X, "wjaccard", batch=2)
    want = [ref_mean_pairwise(X[i].astype(np.float64), "wjaccard") for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-4)

def test_mean_pairwise_errors():
    with pytest.raises(SaetrackError):
        fd.mean_pairwise(np.ones((1, 5)), "cosine")                  # n = 1
    with pytest.raises(SaetrackError):
        fd.mean_pairwise(np.ones((3, 5)), "euclid")
    with pytest.raises(SaetrackError):
        fd.mean_pairwise(-np.ones((3, 5)), "wjaccard")

def test_planted_clusters_activation_space():
    rng = np.random.default_rng(0)
    d, k, T = 64, 25, 3
    ref = [rng.standard_normal((150, d)) for _ in range(T)]
    sets = []
    for t in range(T):
        tight = cluster(rng, k, d, 0.2)
        rand = rng.standard_normal((k, d))
        sets.append(np.stack([tight, rand]))
    M = fd.progress_measure(sets, ref, "cosine")
    assert M.shape == (T, 2)
    assert np.all(M[:, 0] > 0.9)                          # tight cluster: cos ~ 1/(1+0.04)
    assert np.all(np.abs(M[:, 1]) < 0.05)                 # isotropic: E cos = 0, sd ~ 0.005

def test_progress_measure_matches_direct_feature_space():
    rng = np.random.default_rng(3)
    T, F, k, d_in, d_sae, R = 2, 5, 6, 8, 24, 9
    saes = [dict(W_enc=rng.standard_normal((d_in, d_sae)), b_enc=rng.standard_normal(d_sae) - 1,
                 b_dec=rng.standard_normal(d_in), W_dec=rng.standard_normal((d_sae, d_in)))
            for _ in range(T)]
    sets = [rng.standard_normal((F, k, d_in)) for _ in range(T)]
    ref = [rng.standard_normal((R, d_in)) for _ in range(T)]
    res = fd.progress_measure(sets, ref, fd.MEASURES, sae_at=saes, batch=2)
    for m in fd.MEASURES:
        for t in range(T):
            enc = lambda x: np.maximum((x - saes[t]["b_dec"]) @ saes[t]["W_enc"]
                                       + saes[t]["b_enc"], 0)
            base = ref_mean_pairwise(enc(ref[t]), m)
            want = [ref_mean_pairwise(enc(sets[t][f]), m) - base for f in range(F)]
            np.testing.assert_allclose(res[m][t], want, rtol=1e-4, atol=1e-5)
    # activation-space variant equals the direct computation too, and parts add up
    M, ss, sr = fd.progress_measure(sets, ref, "cosine", return_parts=True)
    np.testing.assert_allclose(M, ss - sr[:, None])
    np.testing.assert_allclose(sr[1], ref_mean_pairwise(ref[1], "cosine"), rtol=1e-10)

def dense_progress(sets, ref, saes, measures, batch=4):
    """Today's dense feature-space reference: every set's contexts encoded into all d_sae latents, compared
    as d_sae-wide vectors (the path `progress_measure` used before the sparse codes)."""
    out = {m: np.empty((len(ref), len(sets[0]))) for m in measures}
    for t in range(len(ref)):
        codes, rc = fd.encode(sets[t], saes[t]), fd.encode(ref[t], saes[t])
        for m in measures:
            out[m][t] = fd.mean_pairwise(codes, m, batch=batch) - fd.mean_pairwise(rc, m)
    return out

def small_saes(rng, T, d_in, d_sae, density=0.1):
    """Random ReLU SAEs whose codes are sparse (about `density` of the latents fire on a random context)
    and that fire on nothing at x = b_dec."""
    from statistics import NormalDist
    return [dict(W_enc=rng.standard_normal((d_in, d_sae)) / math.sqrt(d_in),
                 b_enc=-NormalDist().inv_cdf(1 - density) - 0.1 * np.abs(rng.standard_normal(d_sae)),
                 b_dec=0.1 * rng.standard_normal(d_in)) for _ in range(T)]

def test_encode_keeps_shape_and_sparse_encode_is_exact():
    rng = np.random.default_rng(4)
    sae = dict(W_enc=rng.standard_normal((4, 7)), b_enc=np.zeros(7), b_dec=np.zeros(4))
    acts = rng.standard_normal((10, 3, 4))
    np.testing.assert_allclose(fd.encode(acts, sae).numpy(), np.maximum(acts @ sae["W_enc"], 0), rtol=1e-5, atol=1e-6)
    assert fd.encode(acts[0, 0], sae).shape == (7,)
    x = acts.reshape(30, 4)
    c = fd.sparse_encode(x, sae, batch=4)                     # several batches
    dense = torch.zeros(30, 7)
    rows = torch.repeat_interleave(torch.arange(30), c.indptr.diff())
    dense[rows, c.latents] = c.values
    assert torch.equal(dense, fd.encode(x, sae)) and c.d_sae == 7 and (c.values > 0).all()
    for r in range(30):                                       # latents ascending within a context
        assert torch.all(c.latents[c.indptr[r]:c.indptr[r + 1]].diff() > 0)

def test_unique_rows_exact():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((7, 5)).astype(np.float32)
    pool[6] = pool[5]; pool[6, 2] = np.nextafter(pool[5, 2], np.float32(9))   # differs in the last bit only
    idx = rng.integers(0, 7, (4, 6))
    rows, index = fd.unique_rows(pool[idx])
    assert index.shape == (4, 6) and torch.equal(rows[index], torch.as_tensor(pool[idx]))
    assert len(rows) == len(np.unique(idx))

@pytest.mark.parametrize("measure", fd.MEASURES)
def test_sparse_mean_pairwise_matches_dense(measure):
    rng = np.random.default_rng(7)
    sae = small_saes(rng, 1, 16, 256)[0]
    ctx = rng.standard_normal((40, 16)).astype(np.float32)
    ctx[:4] = sae["b_dec"]                                    # contexts where nothing fires
    sets = rng.integers(0, 40, (30, 25))
    sets[0] = 0                                               # all k codes empty
    sets[1, :24] = 1; sets[1, 24] = 10                        # one non-empty code among empty ones
    sets[2] = 11                                              # the same context k times
    sets[3] = rng.integers(10, 13, 25)                        # three contexts, many repeats
    codes = fd.sparse_encode(ctx, sae)
    assert codes.indptr[4] == 0 and codes.indptr[-1] > 0
    dense = fd.encode(ctx, sae).numpy()[sets]
    got = fd.sparse_mean_pairwise(codes, sets, measure, batch=7)
    np.testing.assert_allclose(got, fd.mean_pairwise(dense, measure), rtol=0, atol=1e-7)
    np.testing.assert_allclose(got[:4], [ref_mean_pairwise(dense[i].astype(np.float64), measure) for i in range(4)], atol=1e-7)
    assert got[0] == 0 and abs(got[2] - 1.0) < 1e-6           # empty codes: 0; one code k times: 1 (minus eps)
    np.testing.assert_allclose(fd.sparse_mean_pairwise(codes, sets, measure, max_pairs=1), got, rtol=0, atol=1e-15)   # one set a batch
    with pytest.raises(SaetrackError):
        fd.sparse_mean_pairwise(codes, sets[:, :1], measure)   # k = 1
    with pytest.raises(SaetrackError):
        fd.sparse_mean_pairwise(codes, sets + 40, measure)     # not a context of codes

def test_feature_space_progress_sparse_equals_dense():
    """progress_measure and null_progress in feature space (sparse codes, each distinct context encoded once)
    give today's dense numbers: features whose contexts overlap (drawn from a small pool), repeated contexts,
    contexts where nothing fires, d_sae 256."""
    rng = np.random.default_rng(11)
    T, F, k, d_in, d_sae, R = 3, 40, 25, 16, 256, 60
    saes = small_saes(rng, T, d_in, d_sae)
    pool = rng.standard_normal((120, d_in)).astype(np.float32)
    dp = rng.integers(0, 120, (F, k))
    dp[:10] = rng.integers(0, 8, (10, k))                     # heavily overlapping sets
    sets, ref = [], []
    for t in range(T):
        acts = pool + 0.1 * t * rng.standard_normal(pool.shape).astype(np.float32)
        acts[:3] = saes[t]["b_dec"]                           # nothing fires on these at step t
        sets.append(acts[dp]); ref.append(rng.standard_normal((R, d_in)).astype(np.float32))
    got = fd.progress_measure(sets, ref, fd.MEASURES, sae_at=saes, batch=16)
    want = dense_progress(sets, ref, saes, fd.MEASURES)
    for m in fd.MEASURES:
        np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-7)
        null = fd.null_progress(ref, k=k, n_draws=20, measure=m, sae_at=saes, seed=3)
        rng_n = np.random.default_rng(3)
        for t in range(T):
            idx = np.stack([rng_n.choice(R, k, replace=False) for _ in range(20)])
            c = fd.encode(ref[t], saes[t])
            np.testing.assert_allclose(null[t], fd.mean_pairwise(c[idx], m) - fd.mean_pairwise(c, m), rtol=0, atol=1e-7)
    M, ss, sr = fd.progress_measure(sets, ref, "cosine", sae_at=saes, return_parts=True)
    np.testing.assert_allclose(M, ss - sr[:, None])

def tightening_series(rng, spreads, k=25, d=64, F_rand=1):
    """Feature 0: a cluster whose spread shrinks over t; features 1..: random every t."""
    centre = unit(rng.standard_normal(d))
    base = rng.standard_normal((k, d)) / math.sqrt(d)
    sets, ref = [], []
    for s in spreads:
        tight = centre + s * base                         # same contexts, tightening
        sets.append(np.concatenate([tight[None], rng.standard_normal((F_rand, k, d))]))
        ref.append(rng.standard_normal((150, d)))
    return sets, ref

def test_tightening_cluster_monotone_and_formation_step():
    rng = np.random.default_rng(5)
    steps = [0, 1, 4, 16, 64, 256, 1024]
    spreads = [30, 20, 10, 3, 1, 0.5, 0.3]
    sets, ref = tightening_series(rng, spreads)
    M = fd.progress_measure(sets, ref, "cosine")
    assert np.all(np.diff(M[:, 0]) > 0)
    assert M[-1, 0] > 0.9 and abs(M[0, 0]) < 0.05
    # closed form for the cluster: cos ~ 1/(1+s^2 |base|^2) -> half of final (~0.46) is crossed
    # between spread 3 (M ~ 0.1) and spread 1 (M ~ 0.5): formation at step 64
    fs = fd.formation_step(M, steps)
    assert fs[0] == 64
    assert fs[1] == -1 or M[-1, 1] > 0                    # random feature: not meaningfully formed
    null = fd.null_progress(ref, k=25, n_draws=50, seed=0)
    floor = fd.null_floor(null)
    assert 0 < floor < 0.05
    fs2 = fd.formation_step(M, steps, floor=floor)
    assert fs2[0] == 64 and fs2[1] == -1

def test_formation_step_stays_above_and_never():
    steps = [0, 10, 100, 1000]
    M = np.array([[0.0, 0.6, 0.2, 0.8],     # dips below half-final (0.4) at 100 -> 1000
                  [0.9, 0.1, 0.8, 1.0],     # above 0.5 from step 100 on
                  [0.0, 0.1, 0.2, 0.1],     # tiny but positive: above 0.05 from step 10
                  [0.5, 0.5, 0.5, 0.5]]).T  # constant: formed at init
    fs = fd.formation_step(M, steps)
    assert list(fs) == [1000, 100, 10, 0]
    assert list(fd.formation_step(M, steps, floor=0.6)) == [1000, 100, -1, -1]
    assert list(fd.formation_step(M, steps, threshold=0.55)) == [1000, 100, -1, -1]
    assert list(fd.formation_step(M, steps, return_index=True)) == [3, 2, 1, 0]
    Mn = M.copy()
    Mn[2, 1] = np.nan
    assert fd.formation_step(Mn, steps)[1] == 1000

def test_choose_features_mix():
    rng = np.random.default_rng(0)
    M = rng.random((5, 20))
    cl = np.array(["token"] * 10 + ["concept"] * 10)
    ch = fd.choose_features(M, cl, n=7, n_token=3)
    assert len(set(ch)) == 7 and (cl[ch] == "token").sum() == 3
    assert set(ch[:3]) == set(np.argsort(-M[-1, :10])[:3])
    ch2 = fd.choose_features(M, np.array(["token"] * 20), n=7)
    assert len(set(ch2)) == 7

def _umap_sets():
    rng = np.random.default_rng(0)
    return [np.stack([cluster(rng, 8, 16, 0.3) for _ in range(3)]) for _ in range(6)]

def test_umap_panels_layout_fast_embed():
    seen = []

    def embed(X, rs):
        seen.append((X.shape, rs))
        return X[:, :2]

    fig = fd.plot_umap_panels(_umap_sets(), [0, 1, 10, 100, 1000, 10000], [5, 7, 9],
                              ["token", "concept", "token"], embed=embed)
    assert seen == [((24, 16), 42)] * 6                  # one fit per checkpoint, all points
    assert len([a for a in fig.axes if a.get_title().startswith("step")]) == 6
    markers = {c.get_label(): c for c in fig.axes[0].collections}
    assert len(markers) == 3 and len(fig.legends) == 1

@pytest.mark.skipif(not os.environ.get("SAETRACK_SLOW"), reason="numba JIT ~30 s; SAETRACK_SLOW=1")
def test_umap_embed_real_deterministic():
    X = np.concatenate(_umap_sets()[0])
    torch.set_num_threads(1)                              # UMAP's threadpoolctl put OpenMP's own count back (2 here)
    e1, e2 = fd.umap_embed(X, 42), fd.umap_embed(X, 42)
    np.testing.assert_array_equal(e1, e2)
    assert torch.get_num_threads() == 1                   # umap_embed keeps the caller's count


def test_formation_plots_smoke():
    rng = np.random.default_rng(0)
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    M = np.cumsum(rng.random((len(steps), 12)) * 0.05, 0)
    cl = np.array(["token", "concept"] * 6)
    fs = fd.formation_step(M, steps)
    figs = [fd.plot_feature_region_toy(),
            fd.plot_progress({"activation space": M, "feature space": M}, steps, cl, floors={"feature space": 0.05}),
            fd.plot_measure_robustness({m: M for m in fd.MEASURES}, steps, cl, formation={m: fs for m in fd.MEASURES}),
            fd.plot_formation_distribution(fs, steps, cl)]
    for fig in figs:
        assert fig.axes
    assert figs[1].axes[0].get_xscale() == "symlog"
    assert len(figs[1].axes) == 4 and len(figs[2].axes) == 3


def test_activation_sets_and_reference_indices():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((40, 3)).astype(np.float32)
    dp = np.array([[3, 1, 3], [0, 39, 7]])
    np.testing.assert_array_equal(fd.activation_sets(acts, dp), acts[dp])
    with pytest.raises(SaetrackError):
        fd.activation_sets(acts, np.array([[1, -1]]))
    tokens_shape = (8, 6)                          # 8 rows of ctx 6 -> 5 stored activations per row
    idx = fd.reference_indices(tokens_shape, n=8, seed=3)
    assert len(set(idx // 5)) == 8 and idx.min() >= 0 and idx.max() < 40     # one position in every row
    rp = fd.random_reference_positions(8, 6, n=8, seed=3, skip_first=1)
    np.testing.assert_array_equal(idx, rp[:, 0] * 5 + rp[:, 1] - 1)           # never the BOS at position 0
    np.testing.assert_array_equal(idx, fd.reference_indices(tokens_shape, n=8, seed=3))   # fixed seed


def test_progress_measure_accepts_a_callable_and_checks_lengths():
    rng = np.random.default_rng(1)
    sets = [rng.standard_normal((3, 5, 4)) for _ in range(2)]
    ref = [rng.standard_normal((10, 4)) for _ in range(2)]
    np.testing.assert_allclose(fd.progress_measure(lambda t: sets[t], ref), fd.progress_measure(sets, ref))
    with pytest.raises(SaetrackError):
        fd.progress_measure(sets[:1], ref)


def test_formation_step_relative_to_start():
    steps = [0, 10, 100, 1000]
    M = np.array([[0.5, 0.5, 0.7, 0.8],      # above half of final (0.4) from init; half of the rise (0.65) at 100
                  [0.9, 0.8, 0.7, 0.6]]).T   # falling: formed from the start either way
    assert list(fd.formation_step(M, steps)) == [0, 0]
    assert list(fd.formation_step(M, steps, relative_to="start")) == [100, 0]
    with pytest.raises(SaetrackError):
        fd.formation_step(M, steps, relative_to="final")
