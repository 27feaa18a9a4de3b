"analyse / summarise / plot_analysis on a synthetic run with planted features and known decoder rotation (saetrack.analysis)."
import json

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pytest
import torch

from saetrack.analysis import AnalysisConfig, analyse, feature_report, summarise
from saetrack.figures import plot_analysis
from saetrack.core import SaetrackError, atomic_write_json, file_sha256, read_json
from saetrack.sae import make_sae, save_sae
from saetrack.planted import make_planted, planted_accuracy
from saetrack.semantics import DEAD, TOKEN

HOOK = "blocks.0.hook_resid_pre"
STEPS = [0, 1, 4, 16, 64, 256, 1000]
NOISE = [3, 2, 1, 0.5, 0.2, 0.05, 0]      # norm of extra context noise per checkpoint: contexts cohere over training


def _write_cache(d, acts, tokens, step):
    d.mkdir(parents=True)
    files = {}
    for name, a in (("acts", acts), ("tokens", tokens)):
        np.save(d / f"{name}.npy", a)
        files[name] = dict(shape=list(a.shape), dtype=str(a.dtype), sha256=file_sha256(d / f"{name}.npy"))
    atomic_write_json(d / "manifest.json", dict(key=f"cache{step}", step=step, hook=HOOK, split="train", files=files))


def _angles(F):
    "Decoder angle to the final direction of latent i at checkpoint t: shrinks to 0, faster for low i."
    return np.radians(np.outer(np.linspace(80, 0, len(STEPS)) ** 1.5 / 80 ** 0.5, np.linspace(0.3, 1, F)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run dir with a 7-step series and eval caches: the planted encoder at every step from step 4 on (all
    latents dead at steps 0-1), activations whose context noise shrinks over training, decoder rows rotating
    onto their final direction by known angles."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("analysis") / "run"
    P = make_planted(n=8192, n_token=6, n_concept=6, n_noise=6, n_dead=2, seed=3)
    F, d = len(P["truth"]), P["acts"].shape[1]
    rng = np.random.default_rng(0)
    final = rng.standard_normal((F, d)); final /= np.linalg.norm(final, axis=1, keepdims=True)
    ortho = rng.standard_normal((F, d)); ortho -= (ortho * final).sum(1, keepdims=True) * final
    ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
    ang = _angles(F)
    entries = {}
    for t, s in enumerate(STEPS):
        sae = make_sae(d, F, seed=s)
        with torch.no_grad():
            sae.W_enc.copy_(P["encode"]["W_enc"])
            sae.b_enc.copy_(P["encode"]["b_enc"] - (1e4 if s < 4 else 0))
            sae.b_dec.zero_()
            sae.W_dec.copy_(torch.from_numpy(np.cos(ang[t])[:, None] * final + np.sin(ang[t])[:, None] * ortho).float())
        sd = save_sae(sae, out / "series" / f"step{s}", extra_files={"metrics.json": {"step": s}, "curve.json": {}})
        entries[str(s)] = dict(key=f"k{s}", sha256=file_sha256(sd / "sae_weights.safetensors"))
        noise = rng.standard_normal(P["acts"].shape).astype(np.float32) * (NOISE[t] / np.sqrt(d))
        _write_cache(out / "activations" / HOOK / "train" / f"step{s}", P["acts"] + noise, P["tokens"], s)
    atomic_write_json(out / "series" / "series.json", dict(config={}, config_hash="h0", hook=HOOK, steps=STEPS,
                                                          direction="forward", entries=entries))
    return dict(out=out, P=P, ang=ang)


@pytest.fixture(scope="module")
def result(run):
    return analyse(run["out"], progress=False)


def test_analyse_shapes_classes_and_drift(run, result):
    P, T, F = run["P"], len(STEPS), len(run["P"]["truth"])
    assert not result["cached"] and list(result["steps"]) == STEPS
    assert result["classes"].shape == (T, F) and result["values"].shape == (T, F, 25)
    assert (result["classes"][:2] == DEAD).all()
    assert planted_accuracy(result["classes"][-1], P["truth"])["overall"] >= 0.85
    np.testing.assert_allclose(result["class_fractions"].sum(1), 1)
    np.testing.assert_array_equal(result["datapoints"], result["indices"][-1])
    assert result["live"].sum() == result["n_live"] and result["n_live"] >= 10
    np.testing.assert_allclose(result["cos_to_final"], np.cos(run["ang"]), atol=1e-5)
    live = result["live"]
    for name in ("act_cosine", "feat_cosine", "feat_jaccard", "feat_wjaccard"):
        M = result["M"][name]
        assert M.shape == (T, F) and np.isfinite(M[:, live]).all() and np.isnan(M[:, ~live]).all()
        assert (result["formation"][name][~live] == -1).all()
    # features are dead under SAE[0], SAE[1]: feature-space M is 0 - 0 there, and they form at step >= 4
    fs = result["formation"]["feat_cosine"][live]
    assert ((fs >= 4) | (fs == -1)).all()
    pats = result["patterns"]
    assert set(pats[result["classes"][-1] == TOKEN]) == {"emerging"}
    assert sum(r["count"] for r in result["pattern_counts"]) == F
    b1, b2 = result["stages"]["boundaries"]
    assert STEPS[0] < b1 < b2 < STEPS[-1]
    assert set(result["timings"]) >= {"load", "classes", "progress", "drift", "stages", "patterns", "total"}


def test_cache_is_reused_and_invalidated(run, result, tmp_path):
    again = analyse(run["out"], progress=False)
    assert again["cached"] and again["key"] == result["key"]
    np.testing.assert_array_equal(again["classes"], result["classes"])
    assert again["stages"]["boundaries"] == result["stages"]["boundaries"]
    # a different analysis setting is a different key
    other = analyse(run["out"], progress=False, cfg=AnalysisConfig(formation_frac=0.8))
    assert not other["cached"] and other["key"] != result["key"]
    # a changed series entry key (e.g. a retrained SAE) is recomputed
    man_path = run["out"] / "series" / "series.json"
    man = read_json(man_path)
    man["entries"]["1000"]["key"] = "retrained"
    atomic_write_json(man_path, man)
    try:
        assert not analyse(run["out"], progress=False)["cached"]
    finally:
        man["entries"]["1000"]["key"] = "k1000"
        atomic_write_json(man_path, man)
    assert not list((run["out"] / "analysis").glob(".*.tmp"))


def test_summarise_and_feature_report(result):
    s = summarise(result)
    json.dumps(s)                                           # JSON-able, for the CLI summary
    assert list(s["class_fractions"]) == ["step 0", "step 16", "step 1000"]
    assert s["class_fractions"]["step 0"]["dead"] == 1.0
    assert sum(s["pattern_counts"].values()) == result["n_features"]
    assert len(s["stage_boundaries"]) == 2 and len(s["drift_phases"]["three_segment_breakpoints"]) == 2
    m = s["moved_after_formation"]
    assert 0 <= m["share"] <= 1 and "cosine to final at the formation step is < 0.9" in m["definition"]
    assert set(s["median_formation_step"]) == {"act_cosine", "feat_cosine", "feat_jaccard", "feat_wjaccard"}
    assert s["runtime_s"] > 0
    i = int(np.flatnonzero(result["live"])[0])
    lines = feature_report(result, i)
    assert lines[0].startswith(f"feature {i}: pattern=") and any("formation step" in l for l in lines)


def test_plot_analysis_writes_every_figure(run, result, tmp_path):
    made = plot_analysis(run["out"], tmp_path / "figs", result, umap=False, formats=("png",))
    expected = {"class_fractions", "stages", "feature_panels", "pattern_counts", "pattern_examples", "pattern_panels",
                "feature_region_toy", "progress_measure", "progress_robustness", "formation_steps",
                "drift_hist", "drift_curves", "drift_after_formation", "trajectories"}
    assert expected <= set(made)
    for name, v in made.items():
        assert set(v) == {"shows", "paper"} and len(v["shows"].split()) > 5
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 5000


def test_missing_or_mixed_pool_caches_are_clear_errors(run, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(run["out"] / "series", bad / "series")
    with pytest.raises(SaetrackError, match="no train activations for step 0"):
        analyse(bad, progress=False)
    for s in STEPS:
        src = run["out"] / "activations" / HOOK / "train" / f"step{s}"
        shutil.copytree(src, bad / "activations" / HOOK / "train" / f"step{s}")
    d = bad / "activations" / HOOK / "train" / "step4"
    tok = np.load(d / "tokens.npy"); tok[0, 1] += 1
    np.save(d / "tokens.npy", tok)
    man = read_json(d / "manifest.json"); man["files"]["tokens"]["sha256"] = file_sha256(d / "tokens.npy")
    atomic_write_json(d / "manifest.json", man)
    with pytest.raises(SaetrackError, match="different token rows"):
        analyse(bad, progress=False)
