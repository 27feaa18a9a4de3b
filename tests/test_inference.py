"Stage boundaries with uncertainty (nbs/22_inference): known answers on planted curves, and `saetrack seeds` on a micro run."
import json, shutil
import numpy as np
import pytest
from saetrack.cli import main
from saetrack.core import SaetrackError
from saetrack.inference import (bootstrap_knots, cached_inference, knot_fit, knot_intervals, planted_knot_features,
                                shared_steps, stage_inference)
from saetrack.series import SAESeries

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 750, 1000, 1250, 1500, 1750, 2000]

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_over_seeds_covers_planted_knots(seed):
    "Two planted knots, three noisy 'seeds': BIC finds three segments and both 90% intervals cover the true steps."
    mats = [planted_knot_features(STEPS, [32, 750], [0.0, 1.0, 0.1], n_features=200, noise=0.5, seed=10 * seed + s) for s in range(3)]
    fit = knot_fit(STEPS, np.mean([m.mean(1) for m in mats], 0))
    assert fit["n_segments"] == 3 and fit["knots"] == [32, 750]
    iv = knot_intervals(bootstrap_knots(STEPS, mats, "mean", 3, n_boot=80, seed=seed))
    assert all(lo <= k <= hi for k, (lo, hi) in zip((32, 750), iv)), iv

def test_bic_keeps_a_straight_line_straight_and_finds_one_knot():
    ones = [knot_fit(STEPS, planted_knot_features(STEPS, [], [0.4], seed=s).mean(1))["n_segments"] for s in range(40)]
    assert ones.count(1) >= 38
    one = knot_fit(STEPS, planted_knot_features(STEPS, [128], [0.0, -0.8], seed=3).mean(1))
    assert one["knots"] == [128] and [s["trend"] for s in one["segments"]] == ["flat", "falls"]

def _fake(X, Y):
    cls = np.where(X > np.median(X), 1, 3)
    return dict(steps=STEPS, classes=cls, live=np.ones(X.shape[1], bool), config=dict(formation_space="act_cosine"),
                M={"act_cosine": Y}, cos_to_final=-Y)

def test_views_that_share_a_knot_agree_and_one_that_does_not_is_left_out():
    res = [_fake(planted_knot_features(STEPS, [], [0.0], seed=20 + s), planted_knot_features(STEPS, [16], [1.0, 0.0], seed=s)) for s in range(3)]
    inf = stage_inference(STEPS, res, n_boot=40)
    v = inf["views"]
    assert [k["step"] for k in v["progress measure"]["knots"]] == [16] == [k["step"] for k in v["cos to final"]["knots"]]
    assert 16 in inf["shared"] and inf["agreement"]["progress measure"]["cos to final"] == "16 ~ 16"
    assert shared_steps({"a": v["progress measure"]["knots"], "b": [dict(step=1000, lo=750, hi=1250)]}, STEPS) == []
    json.dumps(inf)                                    # what `saetrack seeds` writes is plain JSON
    with pytest.raises(SaetrackError, match="same checkpoints"):
        stage_inference(STEPS, [res[0], dict(res[1], steps=STEPS[:-1])])

def test_seeds_command_trains_analyses_and_draws(tmp_path, micro_tracked, capsys):
    "`saetrack seeds`: another SAE seed of the same series, analysed beside it, inference cached, drawn by `figures`."
    out = tmp_path / "run"
    shutil.copytree(micro_tracked, out)
    assert main(["seeds", "--preset", "micro", "--out", str(out), "--seeds", "1", "--boot", "20", "--quiet"]) == 0
    main_s, other = SAESeries.load(out / "series"), SAESeries.load(out / "seeds" / "seed1" / "series")
    assert other.steps == main_s.steps and other.manifest["config"]["seed"] == 1
    assert not np.allclose(other.decoders().numpy(), main_s.decoders().numpy())
    assert (out / "seeds" / "seed1" / "analysis" / "analysis.json").exists()
    inf = cached_inference(out)
    assert inf["n_seeds"] == 2 and inf["seeds"][1] == 1 and inf["n_boot"] == 20
    assert "stage boundaries over SAE seeds" in capsys.readouterr().out
    assert main(["figures", "--preset", "micro", "--out", str(out), "--figures", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "stage_inference.png").exists()
    (out / "seeds" / "inference.json").write_text(json.dumps(dict(inf, series_key="another series")))
    with pytest.raises(SaetrackError, match="saetrack seeds --out"): cached_inference(out)

@pytest.mark.parametrize("argv, match", [(["--seeds", "a,b"], "comma-separated integers"), (["--boot", "3"], "at least 10"),
                                         (["--seeds", "42"], "other than the series' own")])
def test_seeds_bad_input_is_one_line(capsys, micro_tracked, tmp_path, argv, match):
    out = tmp_path / "run"
    shutil.copytree(micro_tracked, out)
    assert main(["seeds", "--preset", "micro", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not (out / "seeds").exists()
