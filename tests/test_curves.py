"Training curves to TensorBoard and W&B (offline), read from a micro run's caches."
import shutil
import pytest
from saetrack.cli import main
from saetrack.core import read_json
from saetrack.curves import lm_rows, sae_rows, wandb_mode
from saetrack.series import SAESeries

@pytest.fixture(scope="module")
def logged_run(micro_run, tmp_path_factory):
    "A copy of the micro run whose series is built by `track --log tensorboard`."
    run = tmp_path_factory.mktemp("curves") / "micro"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations", "series"))
    assert main(["track", "--preset", "micro", "--out", str(run), "--quiet", "--log", "tensorboard"]) == 0
    return run

def _scalars(d) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(d)); acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

def _tagged(rows, tag):
    return [(x, m[tag]) for x, m in rows if tag in m]

def _same(got, want):
    "Same x values, and the same values to float32 (TensorBoard stores float32)."
    assert [x for x, _ in got] == [x for x, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)

def test_tensorboard_has_every_curve_at_its_x(logged_run):
    series = SAESeries.load(logged_run / "series")
    tb = logged_run / "logs" / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(["lm"] + [f"sae-step{s}" for s in series.steps])
    lm = _scalars(tb / "lm")
    want = lm_rows(read_json(logged_run / "log.json"))
    for tag in ("train/loss", "eval/loss"):
        _same(lm[tag], _tagged(want, tag))
    for s in (series.steps[0], series.steps[-1]):
        got, want = _scalars(tb / f"sae-step{s}"), sae_rows(series.curve(s))
        for tag in ("eval/nmse", "eval/dead_frac", "train/l0", "train/loss"):
            _same(got[tag], _tagged(want, tag))
        assert got["eval/nmse"][-1][0] == series.curve(s)["eval"][-1]["tokens"]       # x = tokens seen

def test_relogging_rewrites_not_appends(logged_run):
    assert main(["track", "--preset", "micro", "--out", str(logged_run), "--quiet", "--log", "tensorboard"]) == 0
    lm = _scalars(logged_run / "logs" / "tensorboard" / "lm")
    assert len(lm["eval/loss"]) == len(read_json(logged_run / "log.json")["eval"])

def test_wandb_offline_one_run_per_sae(logged_run, monkeypatch):
    "A finished run logged later: every SAE is its own W&B run (offline) in the run directory's group."
    monkeypatch.setenv("WANDB_MODE", "offline"); monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["track", "--preset", "micro", "--out", str(logged_run), "--quiet", "--log", "wandb"]) == 0
    files = sorted((logged_run / "logs" / "wandb").rglob("offline-run-*/run-*.wandb"))
    steps = SAESeries.load(logged_run / "series").steps
    assert len(files) == 1 + len(steps)
    blobs = [f.read_bytes() for f in files]
    names = ["lm"] + [f"sae-step{s}" for s in steps]
    for n in names:                     # a display name is a length-prefixed protobuf string, in exactly one run's file
        assert sum(bytes([len(n)]) + n.encode() in b for b in blobs) == 1, n
    assert all(b"micro" in b for b in blobs)                        # the group: the run directory's name
    assert sum(b"eval/nmse" in b for b in blobs) == len(steps) and sum(b"eval/loss" in b for b in blobs) == len(files)

def test_bad_backend_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["track", "--preset", "micro", "--out", str(out), "--quiet", "--log", "mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --log must be one of wandb, tensorboard (got 'mlflow')"] and not out.exists()

def test_wandb_never_prompts_without_a_key(tmp_path, monkeypatch):
    for k in ("WANDB_MODE", "WANDB_API_KEY"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                       # no ~/.netrc
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
