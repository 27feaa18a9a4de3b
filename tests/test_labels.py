"The labelled sets nbs/data/feature_labels_<pool>.csv (issue 13, items 1 and 2): the seeded, stratified draw, each file's validity, and the rule column of the cached tiny analysis' pool against that analysis."

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from saetrack.core import SaetrackError
from saetrack.semantics import CLASS_NAMES, LABEL_DRAW, LABELS, draw_label_set, label_confusion, label_scores

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT/"nbs"/"data"
CSVS = sorted(DATA.glob("feature_labels_*.csv"))
TINY = ROOT/"runs"/"tiny"


def read_labels(pool: str) -> pd.DataFrame:
    return pd.read_csv(DATA/f"feature_labels_{pool}.csv", keep_default_na=False)


def test_a_labelled_set_per_pool():
    assert [p.name for p in CSVS] == ["feature_labels_eval.csv", "feature_labels_train.csv"]


def test_draw_is_deterministic_and_stratified():
    a, b = draw_label_set(**LABEL_DRAW), draw_label_set(**LABEL_DRAW)
    assert a.equals(b)
    assert not a.equals(draw_label_set(**{**LABEL_DRAW, "seed": LABEL_DRAW["seed"] + 1}))
    n, steps = LABEL_DRAW["n"], np.asarray(LABEL_DRAW["steps"])
    assert len(a) == n and not a.duplicated(["step", "feature"]).any()
    assert a.feature.between(0, LABEL_DRAW["d_sae"] - 1).all() and a.step.isin(steps).all()
    thirds = np.array_split(np.arange(len(steps)), 3)
    for g, pos in enumerate(thirds):                         # equal numbers from each third, each inside its third
        part = a[a.third == g]
        assert len(part) == n // 3 and part.step.isin(steps[pos]).all()
    # uneven sizes: the remainder goes to the earliest groups
    d = draw_label_set(range(7), d_sae=5, n=8, seed=3)
    assert d.third.value_counts().sort_index().tolist() == [3, 3, 2]
    with pytest.raises(SaetrackError):
        draw_label_set(range(3), d_sae=2, n=9, seed=0)       # more pairs than a third holds


@pytest.mark.parametrize("pool", ["eval", "train"])
def test_csv_is_valid_and_matches_the_draw(pool):
    lab = read_labels(pool)
    assert list(lab.columns) == ["step", "feature", "label", "note", "rule"]   # labels first, the rule last
    assert len(lab) >= 150
    assert set(lab.label) <= set(LABELS) and set(lab.rule) <= set(LABELS)
    assert not lab.duplicated(["step", "feature"]).any()
    assert (lab.note.str.len() > 0).all()
    draw = draw_label_set(**LABEL_DRAW)
    assert lab[["step", "feature"]].equals(draw[["step", "feature"]])


def test_confusion_and_scores():
    c = label_confusion(["token", "token", "noise", "concept", "dead", "token"],
                        ["token", "noise", "noise", "noise", "dead", "token"])
    assert list(c.index) == list(c.columns) == list(LABELS) and c.to_numpy().sum() == 6
    assert c.loc["token", "token"] == 2 and c.loc["token", "noise"] == 1 and c.loc["concept", "noise"] == 1
    s = label_scores(c)
    assert s.loc["token", "recall"] == pytest.approx(2 / 3) and s.loc["token", "precision"] == 1
    assert s.loc["noise", "precision"] == pytest.approx(1 / 3) and np.isnan(s.loc["concept", "precision"])
    assert s.loc["overall", "recall"] == pytest.approx(4 / 6)
    with pytest.raises(SaetrackError):
        label_confusion(["token"], ["tokn"])
    for pool in ("eval", "train"):
        lab = read_labels(pool)
        conf = label_confusion(lab.label, lab.rule)
        assert conf.to_numpy().sum() == len(lab)


@pytest.mark.skipif(not (TINY/"analysis"/"analysis.npz").exists(), reason="no cached tiny analysis under runs/tiny")
def test_rule_column_equals_the_cached_tiny_analysis():
    from saetrack.analysis import cached_analysis
    res = cached_analysis(TINY)
    steps = np.asarray(res["steps"])
    assert tuple(int(s) for s in steps) == LABEL_DRAW["steps"] and res["classes"].shape[1] == LABEL_DRAW["d_sae"]
    lab = read_labels(res["config"]["pool"])       # the rule column was filled from this pool's analysis
    t = np.array([int(np.flatnonzero(steps == s)[0]) for s in lab.step])
    rule = [CLASS_NAMES[int(c)] for c in res["classes"][t, lab.feature.to_numpy()]]
    assert lab.rule.tolist() == rule
