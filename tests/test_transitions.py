"Transition patterns (maintaining / shifting / grouping / ...) on constructed histories, counts, figures, feature history (saetrack.transitions)."

from __future__ import annotations

import math

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import saetrack.transitions as tr
from saetrack.semantics import CONCEPT, DEAD, NOISE, TOKEN


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def H(*runs):
    """History from (class, token, n_checkpoints) runs."""
    c, t = [], []
    for cls, tok, n in runs:
        c += [cls] * n
        t += [tok if cls == TOKEN else -1] * n
    return np.array(c), np.array(t)


STEPS = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000])


@pytest.mark.parametrize("runs,expected,change", [
    ([(TOKEN, 5, 12)], "maintaining", None),
    ([(TOKEN, 5, 6), (NOISE, -1, 1), (TOKEN, 5, 5)], "maintaining", None),   # one-checkpoint flicker
    ([(TOKEN, 5, 6), (TOKEN, 9, 6)], "shifting", 32),                        # token -> other token
    ([(TOKEN, 5, 4), (NOISE, -1, 3), (CONCEPT, -1, 5)], "shifting", 64),     # token -> concept
    ([(DEAD, -1, 3), (NOISE, -1, 4), (CONCEPT, -1, 5)], "grouping", 64),     # dead/noisy -> concept
    ([(NOISE, -1, 5), (TOKEN, 3, 7)], "emerging", 16),
    ([(CONCEPT, -1, 12)], "stable_concept", None),
    ([(TOKEN, 5, 8), (DEAD, -1, 4)], "dissolving", 128),
    ([(DEAD, -1, 12)], "dead", None),
    ([(NOISE, -1, 3), (DEAD, -1, 3), (NOISE, -1, 6)], "noise", None),
    ([(TOKEN, 1, 1), (TOKEN, 2, 1), (NOISE, -1, 1), (CONCEPT, -1, 1)] * 3, "other", None),  # flickering
    # the whole sequence, not its ends: feature 853 went 'e' -> noise -> ' a' -> concept -> 'e' ("maintaining" before)
    ([(TOKEN, 5, 2), (NOISE, -1, 2), (TOKEN, 7, 2), (CONCEPT, -1, 3), (TOKEN, 5, 3)], "multiple", 8),
    ([(NOISE, -1, 3), (TOKEN, 5, 5), (NOISE, -1, 4)], "multiple", 4),         # emerges, then dissolves
    ([(TOKEN, 5, 4), (TOKEN, 9, 4), (CONCEPT, -1, 4)], "multiple", 8),        # two shifts
    ([(TOKEN, 5, 5), (NOISE, -1, 3), (TOKEN, 5, 4)], "maintaining", None),   # a quiet interlude, the same token after it
    ([(CONCEPT, -1, 6), (TOKEN, 5, 6)], "other", 32),                        # concept -> token: none of the named ones
])
def test_transition_pattern(runs, expected, change):
    c, t = H(*runs)
    assert len(c) == len(STEPS)
    p, s = tr.transition_pattern(c, t, STEPS)
    assert p == expected
    assert (math.isnan(s) if change is None else s == change)


def test_transition_pattern_keys_and_min_run():
    c, t = H((TOKEN, 0, 6), (TOKEN, 1, 6))
    keys = np.array([0, 0])  # ids 0 and 1 are the same string up to case/space
    assert tr.transition_pattern(c, t, STEPS)[0] == "shifting"
    assert tr.transition_pattern(c, t, STEPS, key_map=keys)[0] == "maintaining"
    c, t = H((TOKEN, 5, 11), (TOKEN, 9, 1))  # change only at the last checkpoint: not persistent
    assert tr.transition_pattern(c, t, STEPS)[0] == "maintaining"
    assert tr.transition_pattern(c, t, STEPS, min_run=1) == ("shifting", 1000.0)


def test_transition_patterns_and_counts():
    hist = [H((TOKEN, 5, 12)), H((TOKEN, 5, 6), (TOKEN, 9, 6)), H((DEAD, -1, 6), (CONCEPT, -1, 6)),
            H((DEAD, -1, 6), (CONCEPT, -1, 6))]
    C = np.stack([h[0] for h in hist], 1)
    T = np.stack([h[1] for h in hist], 1)
    pats, cs = tr.transition_patterns(C, T, STEPS)
    assert pats.tolist() == ["maintaining", "shifting", "grouping", "grouping"]
    tab = tr.pattern_counts(pats, cs, boundaries=(8, 128)).set_index("pattern")
    assert tab.loc["grouping", "count"] == 2 and tab.loc["grouping", "change_step_median"] == 32
    assert tab.loc["grouping", "changes in emergent"] == 2 and tab.loc["shifting", "changes in emergent"] == 1
    assert tab["count"].sum() == 4


def test_feature_history_lines():
    c, t = H((TOKEN, 5, 4), (NOISE, -1, 3), (CONCEPT, -1, 5))
    decode = lambda i: {5: "Ġwhile"}.get(i, f"<{i}>")  # noqa: E731
    lines = tr.feature_history(0, STEPS, c[:, None], t[:, None], decode)
    text = "\n".join(lines)
    print("\n" + text)
    assert lines[0] == "feature 0: pattern=shifting (change at step 64)"
    assert "token ' while'" in lines[1] and "steps 0-4" in lines[1]
    assert "noise" in lines[2] and "concept" in lines[3] and len(lines) == 4




def test_feature_history_with_stats_and_keys():
    c, t = H((TOKEN, 0, 6), (TOKEN, 1, 6))
    stats = {"top_share": np.full((12, 1), 0.9), "coherence_z": np.full((12, 1), 1.5)}
    lines = tr.feature_history(0, STEPS, c[:, None], t[:, None], lambda i: ["The", " the"][i], key_map=np.array([0, 0]), stats=stats)
    assert lines[0] == "feature 0: pattern=maintaining"
    assert len(lines) == 2 and "top_share 0.90, coherence_z 1.5" in lines[1]   # one run: same key


def test_pattern_figures():
    hist = [H((TOKEN, 5, 12)), H((TOKEN, 5, 6), (TOKEN, 9, 6)), H((DEAD, -1, 6), (CONCEPT, -1, 6)),
            H((NOISE, -1, 3), (CONCEPT, -1, 9)), H((NOISE, -1, 5), (TOKEN, 3, 7))]
    C = np.stack([h[0] for h in hist], 1)
    T = np.stack([h[1] for h in hist], 1)
    pats, cs = tr.transition_patterns(C, T, STEPS)
    decode = lambda i: f" w{i}"  # noqa: E731
    fig = tr.plot_pattern_examples(STEPS, C, T, pats, cs, decode, boundaries=(8, 128))
    assert len(fig.axes) == 3 and fig.axes[0].get_xscale() == "symlog"
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles[0] == "maintaining: feature 0" and titles[1].startswith("shifting: feature 1 (change at step 32")
    fig = tr.plot_pattern_examples(STEPS, C, T, pats, cs, decode, wanted=("dissolving",))
    assert fig.axes[0].get_title(loc="left") == "dissolving: no example"
    fig = tr.plot_pattern_counts(pats, cs, STEPS, boundaries=(8, 128))
    a, b = fig.axes
    assert [t.get_text() for t in a.get_yticklabels()] == ["emerging", "grouping", "shifting", "maintaining"]
    heights = sum(r.get_height() for c in b.containers for r in c)
    assert heights == 4 and b.get_xscale() == "symlog"      # four features change, maintaining does not
