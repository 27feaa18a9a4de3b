"Decoder cosine to final on constructed rotations, drift after formation, phases (change points), trajectories (saetrack.drift)."

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
import saetrack.drift as fd
from saetrack.changepoints import fit_piecewise, select_n_segments


pytestmark = pytest.mark.usefixtures("one_thread")


def rotating_series(T=9, F=5, d=16, seed=0):
    """Feature i rotates by angle a_i per checkpoint in a random 2-D plane."""
    rng = np.random.default_rng(seed)
    angles = np.radians(np.linspace(3, 15, F))
    W = np.empty((T, F, d))
    for i in range(F):
        q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
        for t in range(T):
            th = angles[i] * t
            W[t, i] = math.cos(th) * q[:, 0] + math.sin(th) * q[:, 1]
    return W, angles

def test_cos_to_final_known_rotation():
    T = 9
    W, a = rotating_series(T)
    C = fd.cos_to_final(torch.tensor(W, dtype=torch.float32))
    want = np.cos(a[None, :] * (T - 1 - np.arange(T))[:, None])
    np.testing.assert_allclose(C, want, atol=2e-6)
    np.testing.assert_allclose(fd.consecutive_cos(W), np.cos(a)[None].repeat(T - 1, 0), atol=1e-12)
    steps = [0] + [2 ** j for j in range(T - 1)]
    st = fd.stays_above_step(C, steps, 0.9)
    # cos(a * (T-1-t)) > 0.9  <=>  T-1-t < arccos(0.9)/a
    idx = [T - 1 - int(np.ceil(np.arccos(0.9) / ai - 1e-12)) + 1 for ai in a]
    assert list(st) == [steps[max(j, 0)] for j in idx]

def test_drift_after_formation_constructed():
    T = 9
    W, a = rotating_series(T)
    steps = list(range(0, 90, 10))
    formation = np.array([0, 40, 80, -1, 20])
    d = fd.drift_after_formation(W, formation, steps)
    fi = np.array([0, 4, 8, -1, 2])
    for i in range(5):
        if fi[i] < 0:
            assert np.isnan(d["cos_at_formation"][i]) and np.isnan(d["path_after_deg"][i])
            continue
        remaining = a[i] * (T - 1 - fi[i])
        np.testing.assert_allclose(d["path_after_deg"][i], np.degrees(remaining), atol=1e-6)
        # planar rotation by < 180 deg total: straight-line angle = path length
        np.testing.assert_allclose(d["angle_at_formation_deg"][i], np.degrees(remaining),
                                   atol=1e-5)
        np.testing.assert_allclose(d["one_minus_cos"][i], 1 - math.cos(remaining), atol=1e-9)
    np.testing.assert_allclose(d["path_total_deg"], np.degrees(a * (T - 1)), atol=1e-6)
    np.testing.assert_allclose(d["frac_path_after"][1], 0.5, atol=1e-9)
    with pytest.raises(SaetrackError):
        fd.drift_after_formation(W, [0, 5, 80, -1, 20], steps)     # 5 is not a checkpoint step

def test_drift_path_exceeds_net_angle_for_back_and_forth():
    # a direction that swings away and comes back: net angle 0, path length 2*30 deg
    d = 4
    e0, e1 = np.eye(d)[0], np.eye(d)[1]
    th = np.radians([0, 30, 0])
    W = np.stack([np.cos(t) * e0 + np.sin(t) * e1 for t in th])[:, None, :]
    r = fd.drift_after_formation(W, [0], [0, 1, 2])
    np.testing.assert_allclose(r["angle_at_formation_deg"], [0.0], atol=1e-6)
    np.testing.assert_allclose(r["path_after_deg"], [60.0], atol=1e-6)

def test_detect_phases_recovers_planted_breakpoints():
    steps = np.array([0] + [int(2 ** (j / 1.2)) for j in range(1, 17)])
    steps = np.unique(steps)
    x = np.log10(steps + 1.0)
    kb1, kb2 = 5, 11                                     # planted knots (indices)
    y = 0.1 + 0.0 * x + 0.8 * np.clip(x - x[kb1], 0, None) - 0.8 * np.clip(x - x[kb2], 0, None)
    rng = np.random.default_rng(0)
    yn = y + 0.003 * rng.standard_normal(len(y))
    fit = fd.detect_phases(steps, yn, 3)
    assert fit.breakpoint_index == [kb1, kb2]
    assert fit.breakpoint_steps == [int(steps[kb1]), int(steps[kb2])]
    assert abs(fit.segments[1][2] - 0.8) < 0.05 and abs(fit.segments[0][2]) < 0.05
    best, bics = select_n_segments(steps, yn, max_segments=5)
    assert best.n_segments == 3, bics
    # discontinuous variant with a planted jump
    yj = np.where(np.arange(len(x)) < 8, 0.0, 1.0) + 0.5 * x + 0.003 * rng.standard_normal(len(x))
    fj = fd.detect_phases(steps, yj, 2, continuous=False, min_size=3)
    assert fj.breakpoint_index == [8] and fj.breakpoint_steps == [int(steps[8])]
    assert abs(fj.segments[0][2] - 0.5) < 0.1

def test_detect_phases_exhaustive_is_optimal():
    rng = np.random.default_rng(1)
    steps = np.arange(10) ** 2
    y = rng.standard_normal(10)
    fit = fd.detect_phases(steps, y, 3)
    x = np.log10(steps + 1.0)
    for k1 in range(1, 9):
        for k2 in range(k1 + 1, 9):
            A = np.column_stack([np.ones(10), x, np.clip(x - x[k1], 0, None),
                                 np.clip(x - x[k2], 0, None)])
            r = y - A @ np.linalg.lstsq(A, y, rcond=None)[0]
            assert fit.sse <= r @ r + 1e-10

def test_trajectory_pca_planar_rotation_is_circle_arc():
    W, a = rotating_series(T=12, F=1, d=16, seed=3)
    Z, pca = fd.trajectory_pca(W[:, 0], return_pca=True)
    assert Z.shape == (12, 2)
    np.testing.assert_allclose(pca.explained_variance_ratio_.sum(), 1.0, atol=1e-10)
    # isometry: pairwise distances preserved; consecutive chord = 2 sin(a/2)
    D0 = np.linalg.norm(W[:, 0, None] - W[None, :, 0], axis=-1)
    Dz = np.linalg.norm(Z[:, None] - Z[None], axis=-1)
    np.testing.assert_allclose(Dz, D0, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(np.diff(Z, axis=0), axis=1), 2 * np.sin(a[0] / 2))
    # algebraic circle fit: radius 1
    A = np.column_stack([2 * Z, np.ones(len(Z))])
    cx, cy, c = np.linalg.lstsq(A, (Z ** 2).sum(1), rcond=None)[0]
    np.testing.assert_allclose(math.sqrt(c + cx ** 2 + cy ** 2), 1.0, atol=1e-8)
    assert Z[-1, 0] > Z[0, 0]                              # oriented init -> final


def test_drift_plots_smoke():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256]
    T, F = len(steps), 12
    W, _ = rotating_series(T, F, 16)
    C = fd.cos_to_final(W)
    cl = np.array(["token", "concept"] * 6)
    fs = np.array([steps[i % T] for i in range(F)])
    figs = [fd.plot_drift_hist(C, steps, [0, 8, 64], live=np.arange(F) < 10),
            fd.plot_drift_curves(C, steps, [0, 1, 2], phases=fd.detect_phases(steps, np.median(C, 1), 3)),
            fd.plot_drift_after_formation(fd.drift_after_formation(W, fs, steps), cl),
            fd.plot_trajectories(W, [0, 1, 2, 3, 4], fs[:5], steps, ncols=3, classes=cl[:5])]
    for fig in figs:
        assert fig.axes
    assert figs[1].axes[0].get_xscale() == "symlog"
    assert "of 10 latents" in figs[0]._suptitle.get_text()
    with pytest.raises(SaetrackError):
        fd.plot_drift_hist(C, steps, [3])


def test_detect_phases_bic_choice_and_shared_knots():
    steps = np.unique(np.r_[0, np.round(np.logspace(0, 5, 30))]).astype(int)
    x = np.log10(steps + 1.0)
    rng = np.random.default_rng(2)
    y = 0.5 * (np.clip(x - x[8], 0, None) - np.clip(x - x[20], 0, None))
    fit = fd.detect_phases(steps, y + rng.normal(0, 0.01, len(x)), None, max_segments=5)
    assert fit.n_segments == 3 and fit.breakpoint_index == [8, 20]
    Y = np.stack([y, -3 * y + 1], 1) + rng.normal(0, 0.01, (len(x), 2))     # two curves, shared knots
    two = fit_piecewise(steps, Y, 3)
    assert two.breakpoint_index == [8, 20] and two.fitted.shape == Y.shape
    assert np.allclose(two.segments[1][2], [0.5, -1.5], atol=0.05)           # per-curve slopes of the middle phase
    with pytest.raises(SaetrackError):
        fit_piecewise(steps[:3], y[:3], 3, min_size=2)
