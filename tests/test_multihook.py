"Several hooks in one run (issue 15, item 1): one forward pass per batch feeds every hook, one series per hook."
import shutil
import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer
from saetrack.activations import cache_activations, cache_hooks, harvest, load_activations, token_rows
from saetrack.checkpoints import open_source
from saetrack.cli import main
from saetrack.config import get_preset
from saetrack.core import SaetrackError
from saetrack.lm import load_tokens
from saetrack.pipeline import track
from saetrack.series import SAESeries

H0, H1 = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"
HOOKS = [H0, "blocks.0.hook_attn_out", H1]        # read at a hook point, inside a block, and as the returned residual

@pytest.fixture
def forward_calls(monkeypatch):
    "Every forward pass of any HookedTransformer, counted (run_with_hooks goes through forward too)."
    calls, real = [], HookedTransformer.forward
    monkeypatch.setattr(HookedTransformer, "forward", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    return calls

def test_one_pass_equals_one_hook_harvests_bitwise(micro_run, micro, tmp_path, one_thread):
    stream = load_tokens(micro_run, "train")
    both = cache_hooks(micro_run, HOOKS, stream, micro.acts.train_tokens, tmp_path / "multi", steps=[0, 24], progress=False)
    assert sorted(both) == sorted(HOOKS) and all(sorted(v) == [0, 24] for v in both.values())
    for h in HOOKS:
        alone = cache_activations(micro_run, h, stream, micro.acts.train_tokens, tmp_path / "single", steps=[0, 24], progress=False)
        for s in (0, 24):
            a, b = load_activations(both[h][s]), load_activations(alone[s])
            assert both[h][s] == tmp_path / "multi" / h / "train" / f"step{s}"       # the one-hook layout, per hook
            assert np.array_equal(a.acts, b.acts) and np.array_equal(a.tokens, b.tokens)
            assert a.manifest["key"] == b.manifest["key"] and a.manifest["hook"] == h
            assert a.manifest["files"]["acts"]["sha256"] == b.manifest["files"]["acts"]["sha256"]
    assert not np.array_equal(load_activations(both[H0][24]).acts, load_activations(both[H1][24]).acts)

def test_model_runs_once_per_batch(micro_run, micro, tmp_path, forward_calls):
    stream = load_tokens(micro_run, "train")
    rows = token_rows(stream, micro.acts.train_tokens, micro.lm.ctx)
    batches = -(-len(rows) // 64)
    model = open_source(micro_run).hooked(24)
    outs = {h: np.empty((len(rows) * (rows.shape[1] - 1), model.cfg.d_model), np.float32) for h in HOOKS}
    harvest(model, rows, outs, batch_rows=64)
    assert len(forward_calls) == batches                     # not len(HOOKS) * batches
    forward_calls.clear()
    cache_hooks(micro_run, HOOKS, stream, micro.acts.train_tokens, tmp_path / "a", steps=[24], progress=False)
    assert len(forward_calls) == batches
    forward_calls.clear()
    for h in HOOKS: cache_activations(micro_run, h, stream, micro.acts.train_tokens, tmp_path / "b", steps=[24], progress=False)
    assert len(forward_calls) == len(HOOKS) * batches        # what the shared pass saves

def test_only_missing_hooks_are_harvested(micro_run, micro, tmp_path, forward_calls):
    stream, root = load_tokens(micro_run, "train"), tmp_path / "acts"
    first = cache_activations(micro_run, H1, stream, micro.acts.train_tokens, root, steps=[24], progress=False)[24]
    before = (first / "manifest.json").stat().st_mtime_ns
    cache_hooks(micro_run, [H0, H1], stream, micro.acts.train_tokens, root, steps=[24], progress=False)
    assert (first / "manifest.json").stat().st_mtime_ns == before      # reused, not rewritten
    forward_calls.clear()
    assert cache_hooks(micro_run, [H1, H0], stream, micro.acts.train_tokens, root, steps=[24], progress=False)[H0][24] == root / H0 / "train" / "step24"
    assert forward_calls == []                                          # everything cached: the model never runs

def _small(hook=None):
    "The micro preset (on `hook`, comma-separated: several) with a few hundred SAE steps per series: what matters here is equality, not convergence."
    return get_preset("micro", acts=dict(hook=hook), sae=dict(budget="fixed", tokens_first=8192, tokens_next=2048, warmup_first=4))

def test_two_hook_series_equal_two_one_hook_series(micro_run, tmp_path, capsys, one_thread):
    runs = {}
    for name, hook in (("both", f"{H0},{H1}"), ("h0", H0), ("h1", H1)):
        runs[name] = tmp_path / name
        shutil.copytree(micro_run, runs[name], ignore=shutil.ignore_patterns("activations"))
        got = track(_small(hook), runs[name], steps=[0, 24], progress=False)
        assert list(got) == hook.split(",")
    both = runs["both"] / "series"
    assert not (both / "series.json").exists() and (runs["h0"] / "series" / "series.json").exists()   # one-hook layout unchanged
    for h, single in ((H0, runs["h0"]), (H1, runs["h1"])):
        s, ref = SAESeries.load(both, hook=h), SAESeries.load(single / "series")
        assert s.path == both / h and s.hook == ref.hook == h and s.steps == ref.steps == [0, 24]
        assert torch.allclose(s.decoders(), ref.decoders(), atol=1e-6)
        for k in ("W_enc", "b_enc", "b_dec"):
            assert all(torch.allclose(getattr(s.sae(t), k), getattr(ref.sae(t), k), atol=1e-6) for t in s.steps)
        m, m_ref = s.metrics(), ref.metrics()
        cols = ["nmse", "l0", "ce_clean", "ce_sae", "ce_recovered"]       # ce_recovered: NaN where it is undefined, in both
        assert np.allclose(m[cols], m_ref[cols], atol=1e-6, equal_nan=True)
        assert s.sae(24).cfg.metadata.hook_name == h
    assert not torch.allclose(SAESeries.load(both, hook=H0).decoders(), SAESeries.load(both, hook=H1).decoders())
    with pytest.raises(SaetrackError, match=r"holds the series of hooks .*pick one, e\.g\. SAESeries\.load\(.*hook="):
        SAESeries.load(both)
    with pytest.raises(SaetrackError, match="none of blocks.1.hook_mlp_out"):
        SAESeries.load(both, hook="blocks.1.hook_mlp_out")
    with pytest.raises(SaetrackError, match=f"is of {H0}, not {H1}"):
        SAESeries.load(runs["h0"] / "series", hook=H1)
    capsys.readouterr()
    assert main(["analyse", "--preset", "micro", "--out", str(runs["both"]), "--quiet"]) == 2     # one-series commands say why
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "several hooks" in err and "its own --out" in err
    with pytest.raises(SaetrackError, match="new --out"):          # one run keeps one layout
        track(_small(f"{H0},{H1}"), runs["h0"], steps=[0, 24], progress=False)

@pytest.mark.parametrize("hooks,match", [
    (f"{H0},blocks.7.hook_resid_pre", "outside the model"),
    (f"{H0},blocks.0.hook_nope", "not a hook of this model"),
    (f"{H0},,{H1}", "comma-separated"),
    (f"{H0},{H1},{H0}", f"names {H0} twice"),
])
@pytest.mark.parametrize("cmd", ["activations", "track"])
def test_bad_hooks_are_one_line_exit_2_and_leave_no_cache(capsys, micro_run, tmp_path, hooks, match, cmd):
    where = ["--run", str(micro_run)] if cmd == "activations" else ["--checkpoints", str(micro_run)]
    assert main([cmd, "--preset", "micro", *where, "--hook", hooks, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert not any((tmp_path / "o").rglob("*.npy"))

def test_one_hook_commands_refuse_several(capsys, tmp_path):
    for cmd in ("convergence", "reproduce"):
        assert main([cmd, "--preset", "micro", "--hook", f"{H0},{H1}", "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"`saetrack {cmd}` takes one --hook" in err
