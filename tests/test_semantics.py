"Feature datapoints, the token/concept classifier on planted data, stage boundaries, class-fraction and panel figures (saetrack.semantics)."

from __future__ import annotations

import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import saetrack.semantics as sm
from saetrack import inference, planted
from saetrack.core import SaetrackError
from saetrack.semantics import CONCEPT, DEAD, NOISE, TOKEN
from saetrack.transitions import transition_patterns


pytestmark = pytest.mark.usefixtures("one_thread")


def brute_top_k(codes: np.ndarray, k: int, positive_only: bool = True):
    """codes [N, F] -> per feature the k largest values, ties by lower index (lexsort)."""
    N, F = codes.shape
    vals = np.zeros((F, k), np.float32)
    idx = np.full((F, k), -1, np.int64)
    for f in range(F):
        o = np.lexsort((np.arange(N), -codes[:, f]))[:k]
        v = codes[o, f]
        if positive_only:
            keep = v > 0
            o, v = o[keep], v[keep]
        vals[f, :len(o)], idx[f, :len(o)] = v, o
    return vals, idx


@pytest.mark.parametrize("batch,k", [(7, 5), (64, 25), (1000, 25), (3, 10)])
def test_top_k_exact_with_ties(batch, k):
    rng = np.random.default_rng(0)
    # small integers -> exact float arithmetic whatever the batching, and many exact ties
    acts = rng.integers(-2, 3, size=(997, 6)).astype(np.float32)
    acts[500:520] = acts[10]  # duplicated rows: ties at the top
    W = torch.from_numpy(rng.integers(-2, 3, size=(6, 40)).astype(np.float32))
    b = torch.from_numpy(rng.integers(-6, 1, size=40).astype(np.float32))
    b[:3] = -1e4  # dead features
    enc = lambda x: torch.relu(x @ W + b)  # noqa: E731
    codes = enc(torch.from_numpy(acts)).numpy()
    ref_v, ref_i = brute_top_k(codes, k)
    v, i = sm.top_k_contexts(enc, acts, k=k, batch=batch)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(i, ref_i)
    assert (i[:3] == -1).all()
    # without positive_only: zeros are kept, still lowest index first
    ref_v, ref_i = brute_top_k(codes, k, positive_only=False)
    v, i = sm.top_k_contexts(enc, acts, k=k, batch=batch, positive_only=False)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(i, ref_i)


def test_top_k_fire_counts_and_memmap(tmp_path):
    rng = np.random.default_rng(1)
    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(300, 8))
    a[:] = rng.standard_normal((300, 8))
    a.flush()
    acts = np.load(tmp_path / "a.npy", mmap_mode="r")
    sae = dict(W_enc=torch.randn(8, 12), b_enc=torch.zeros(12) - 0.5, b_dec=torch.zeros(8))
    v, i, n = sm.top_k_contexts(sae, acts, k=4, batch=64, fire_counts=True)
    codes = sm.as_encode_fn(sae)(torch.from_numpy(np.array(acts))).numpy()
    np.testing.assert_array_equal(n, (codes > 0).sum(0))
    np.testing.assert_array_equal(i, brute_top_k(codes, 4)[1])



def test_top_k_extra_columns_and_non_finite_codes():
    rng = np.random.default_rng(2)
    acts = rng.integers(-3, 4, size=(500, 5)).astype(np.float32)
    W, R = (torch.from_numpy(rng.integers(-2, 3, size=(5, n)).astype(np.float32)) for n in (9, 4))
    enc, extra = (lambda x: torch.relu(x @ W)), (lambda x: x @ R)  # noqa: E731
    v, i = sm.top_k_contexts(enc, acts, k=6, batch=37, extra_fn=extra)
    codes = torch.cat([enc(torch.from_numpy(acts)), extra(torch.from_numpy(acts))], 1).numpy()
    ref_v, ref_i = brute_top_k(codes, 6)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(i, ref_i)
    for bad in (float("nan"), float("inf")):          # in a later batch, where no column may need its top k
        a = acts.copy(); a[450, 0] = bad
        with pytest.raises(SaetrackError, match="non-finite codes in rows 444..481"):
            sm.top_k_contexts(lambda x: x, a, k=3, batch=37)

def test_token_at_layout():
    tokens = np.arange(3 * 5, dtype=np.int32).reshape(3, 5)  # ctx=5 -> 4 activations per row
    assert sm.token_at(tokens, [0, 3, 4, 11, -1]).tolist() == [1, 4, 6, 14, -1]


def test_token_keys_case_space_insensitive():
    keys = sm.token_keys(["The", "Ġthe", " the", "▁THE", "then", "\n", " "])
    assert keys[0] == keys[1] == keys[2] == keys[3]
    assert len({keys[0], keys[4], keys[5], keys[6]}) == 4
    # a feature spread over "The"/" the" variants is token-level once keys are used
    vals = np.ones((1, 10))
    tok = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]])
    s_raw = sm.feature_stats(vals, tok)
    s_key = sm.feature_stats(vals, tok, key_map=keys)
    assert s_raw["top_share"][0] == pytest.approx(0.3)
    assert s_key["top_share"][0] == pytest.approx(1.0) and s_key["n90"][0] == 1
    assert sm.classify_stats(s_key)[0] == TOKEN


def test_feature_stats_values():
    vals = np.array([[4.0, 3, 2, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0.0], [1, 1, 1, 1, 1, 1]])
    tok = np.array([[7, 8, 7, 9, -1, -1], [1, 2, 3, 4, 5, 6], [-1] * 6, [1, 2, 1, 2, 1, 2]])
    s = sm.feature_stats(vals, tok)
    assert s["n_active"].tolist() == [4, 6, 0, 6]
    assert s["top_share"][0] == pytest.approx(0.6) and s["top_token"].tolist() == [7, 1, -1, 1]
    assert s["n90"].tolist() == [2, 6, 0, 2]  # masses 0.6, 0.3, 0.1: two keys reach 90%
    assert s["entropy"][1] == pytest.approx(1.0)
    cls = sm.classify_stats(s)  # no vectors -> fallback rule (n90 <= 0.5 n_active -> concept)
    assert cls.tolist() == [DEAD, NOISE, DEAD, CONCEPT]  # row 0: 4 < min_active=5 positives
    assert sm.classify_stats(s, sm.Thresholds(min_active=3, token_share=0.6))[0] == TOKEN


def test_planted_classification_accuracy():
    P = planted.make_planted(seed=0)
    r = sm.classify_checkpoint(P["encode"], P["acts"], P["tokens"], k=25, seed=0)
    acc = planted.planted_accuracy(r["classes"], P["truth"])
    print(f"\nplanted accuracy (n={len(P['truth'])} latents, thresholds {sm.Thresholds()}): {acc}")
    assert acc["overall"] >= 0.90
    assert acc["dead"] == 1.0 and acc["token"] >= 0.95
    assert acc["concept"] >= 0.8 and acc["noise"] >= 0.8
    # the reported top token of a planted token feature is its token
    f_tok = np.flatnonzero((P["truth"] == TOKEN) & (r["classes"] == TOKEN))
    assert set(r["top_token"][f_tok]) <= set(P["token_feature_tokens"].tolist())
    tab = planted.sensitivity_table(r["stats"], P["truth"], {"token_share": [0.5, 0.8, 0.95], "concept_z": [1, 2.5, 5]})
    print(tab.to_string())
    assert len(tab) == 6
    # the table must be able to show a bad threshold: at concept_z=5 most concepts are lost
    assert tab.query("param == 'concept_z' and value == 5")["concept"].item() < 0.5


def _hinge(x, k1, k2, a, s):
    return a + s[0] * x + (s[1] - s[0]) * np.maximum(x - k1, 0) + (s[2] - s[1]) * np.maximum(x - k2, 0)


def test_key_mass_matches_dense_table_and_batches():
    rng = np.random.default_rng(4)
    C = np.maximum(rng.standard_normal((1000, 9)) - 0.8, 0).astype(np.float32); C[:, 2] = 0
    keys = rng.integers(0, 13, 1000)
    dense = np.zeros((13, 9)); np.add.at(dense, keys, C.astype(np.float64))
    want = np.divide(dense.max(0), dense.sum(0), out=np.zeros(9), where=dense.sum(0) > 0)
    for batch, every in ((1000, 1 << 22), (77, 40)):          # one batch, no merge / many batches, many merges
        km = sm.KeyMass(keys, merge_every=every)
        for s in range(0, 1000, batch): km.add(s, torch.from_numpy(C[s:s + batch]))
        assert np.allclose(km.share(), want, rtol=1e-12) and km.share()[2] == 0
    with pytest.raises(SaetrackError): sm.KeyMass(keys).share()


def test_mass_share_separates_planted_token_features():
    P = planted.make_planted(seed=0)
    r = sm.classify_checkpoint(P["encode"], P["acts"], P["tokens"], k=25, seed=0)
    share, truth = r["stats"]["mass_share"], P["truth"]
    assert (share[truth == DEAD] == 0).all()
    assert np.median(share[truth == TOKEN]) > 0.8 > 0.5 > np.median(share[(truth == CONCEPT) | (truth == NOISE)])
    by_mass = sm.token_by_mass(r["classes"][None], share[None])[0]
    assert by_mass == ((r["classes"] != DEAD) & (share >= sm.Thresholds().mass_share)).mean()


def test_stage_boundaries_recover_planted():
    steps = np.unique(np.r_[0, np.round(np.logspace(0, 5, 40))]).astype(int)
    x = np.log10(steps + 1)
    i1, i2 = 12, 28
    rng = np.random.default_rng(0)
    low_rise_stable = _hinge(x, x[i1], x[i2], 0.1, (0.0, 0.5, 0.02)) + rng.normal(0, 0.01, len(x))
    drift = _hinge(x, x[i1], x[i2], 0.0, (0.02, 0.3, 0.05)) + rng.normal(0, 0.01, len(x))
    r = inference.detect_stage_boundaries(steps, {"concept fraction": low_rise_stable, "drift": drift,
                                            "constant": np.ones(len(x))})
    assert r["index"] == (i1, i2)
    assert r["boundaries"] == (steps[i1], steps[i2])
    assert r["curves"] == ["concept fraction", "drift"] and r["r2_gain"] > 0.5
    # a single curve with a different planted pair
    r = inference.detect_stage_boundaries(steps, _hinge(x, x[5], x[33], 0, (0.0, 1.0, 0.0)))
    assert r["index"] == (5, 33)
    with pytest.raises(SaetrackError):
        inference.detect_stage_boundaries(steps[:4], np.arange(4.0))


def test_classify_all_and_plots():
    P = planted.make_planted(n=8192, n_token=6, n_concept=6, n_noise=6, n_dead=2, seed=3)
    enc = P["encode"]
    dead_enc = dict(enc, b_enc=enc["b_enc"] - 1e4)  # "step 0": everything dead
    steps = np.array([0, 10, 100, 1000, 10000, 100000])
    ck = [(dead_enc, P["acts"])] * 2 + [(enc, P["acts"])] * 4
    res = sm.classify_all(steps, ck, P["tokens"], k=10, n_null=32)
    F = len(P["truth"])
    assert res["classes"].shape == (6, F) and res["values"].shape == (6, F, 10)
    assert res["top_token"].shape == (6, F) and res["top_share"].shape == (6, F) and res["null"].shape == (6, 2)
    assert (res["classes"][:2] == DEAD).all() and (res["indices"][:2] == -1).all()
    fr = sm.class_fractions(res["classes"])
    np.testing.assert_allclose(fr.sum(1), 1.0)
    pats, cs = transition_patterns(res["classes"], res["top_token"], steps)
    assert "dead" not in pats[P["truth"] != DEAD]
    assert (pats[(res["classes"][-1] == TOKEN)] == "emerging").all()
    decode = lambda i: P["strings"][i]  # noqa: E731
    fig = sm.plot_class_fractions(steps, res["classes"], boundaries=(10, 1000))
    assert fig.axes[0].get_xscale() == "symlog"
    pos = sm.pick_checkpoints(steps, n=4)
    assert pos[0] == 0 and pos[-1] == 5 and len(pos) == 4
    ex = sm.choose_examples(res["classes"][-1], [TOKEN, CONCEPT], n=1)
    panels = [sm.build_feature_panel(f[0], pos, steps, res["values"], res["indices"], P["tokens"], decode,
                                     res["classes"], res["top_token"]) for f in ex.values() if f]
    fig = sm.plot_feature_panel(panels)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(s.startswith("step 0:") for s in texts) and "(no activations)" in texts


def test_stage_boundaries_need_enough_checkpoints_and_report_fit():
    steps = np.array([0, 1, 2, 4, 8, 16, 32])
    r = inference.detect_stage_boundaries(steps, np.array([0, 0, 0, 1, 2, 2, 2.0]))
    assert r["z"].shape == (7, 1) and r["fitted"].shape == (7, 1) and r["slopes"].shape == (1, 3)
    i, j = r["index"]
    assert i >= 2 and j - i >= 2 and j <= 4          # every stage spans >= min_points=3 checkpoints
    with pytest.raises(SaetrackError):
        inference.detect_stage_boundaries(steps[:6], np.arange(6.0))
    with pytest.raises(SaetrackError):
        inference.detect_stage_boundaries(steps, {"flat": np.ones(7)})


def test_plot_stage_fit_and_text_panel_truncation():
    steps = np.unique(np.r_[0, np.round(np.logspace(0, 4, 20))]).astype(int)
    x = np.log10(steps + 1)
    r = inference.detect_stage_boundaries(steps, {"a": _hinge(x, x[5], x[14], 0, (0, 1, 0)), "b": x ** 2})
    fig = inference.plot_stage_fit(steps, r, title="t")
    assert fig.axes[0].get_xscale() == "symlog" and len(fig.axes[0].get_legend().get_texts()) == 2
    assert sm._fit_prefix(["aaaa", "bbbb", "cccc"], 9) == "…bbbbcccc"
    assert sm._fit_prefix("0123456789", 4) == "6789"


def test_feature_panel_wraps_columns():
    rows = [dict(step=s, label="token ' a'", contexts=[(["x", "y"], " a", 1.0)]) for s in (0, 10)]
    panels = [dict(feature=f, rows=rows) for f in range(3)]
    fig = sm.plot_feature_panel(panels, ncols=2)
    boxes = [ax.get_position() for ax in fig.axes]
    assert len(boxes) == 3 and boxes[0].y0 > boxes[2].y0 and abs(boxes[0].x0 - boxes[2].x0) < 1e-9
