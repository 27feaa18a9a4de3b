"Determinism, resuming and corrupt caches."
import numpy as np
import pytest
from saetrack.activations import cache_activations, load_activations
from saetrack.config import get_preset
from saetrack.core import CorruptCacheError, SaetrackError, file_sha256
from saetrack.lm import saved_steps, step_dir, train_lm, load_tokens, STATE

def _weights(run):
    return {s: file_sha256(step_dir(run, s) / "model.safetensors") for s in saved_steps(run)}

def test_same_seed_same_checkpoints_and_activations(tmp_path, micro, micro_run, micro_acts):
    other = tmp_path / "again"
    train_lm(micro.lm, other, progress=False)
    assert _weights(other) == _weights(micro_run)
    acts = cache_activations(other, micro.acts.hook, load_tokens(other, "train"), micro.acts.train_tokens,
                             other / "activations", steps=[0, 24], progress=False)
    for s in (0, 24):
        assert np.array_equal(load_activations(acts[s]).acts, load_activations(micro_acts[s]).acts)

def test_other_seed_differs(tmp_path, micro_run):
    p = get_preset("micro", seed=1, steps=2)
    train_lm(p.lm, tmp_path / "s1", progress=False)
    assert file_sha256(step_dir(tmp_path / "s1", 0) / "model.safetensors") != _weights(micro_run)[0]

def test_resume_is_bit_identical(tmp_path, micro, micro_run):
    run = tmp_path / "resumed"
    train_lm(micro.lm, run, progress=False, stop_after=11)            # "killed" after step 11: last checkpoint is 8
    assert saved_steps(run) == [0, 1, 2, 4, 8] and (step_dir(run, 8) / STATE).exists()
    (run / ".step16.deadbeef.tmp").mkdir()                              # a half-written checkpoint of the killed run
    log = train_lm(micro.lm, run, progress=False)
    assert log["complete"] and not list(run.glob(".*.tmp"))
    assert _weights(run) == _weights(micro_run)

def test_finished_run_is_reused(micro, micro_run):
    before = _weights(micro_run)
    log = train_lm(micro.lm, micro_run, progress=False)
    assert log["complete"] and _weights(micro_run) == before

def test_changed_config_refused(tmp_path, micro, micro_run):
    with pytest.raises(SaetrackError, match="different config"):
        train_lm(get_preset("micro", lr=1e-2).lm, micro_run, progress=False)

def test_corrupt_cache_detected_and_rebuilt(tmp_path, micro, micro_run):
    root = tmp_path / "acts"
    args = (micro_run, micro.acts.hook, load_tokens(micro_run, "train"), micro.acts.train_tokens, root)
    p = cache_activations(*args, steps=[24], progress=False)[24]
    good = np.array(load_activations(p).acts)
    with open(p / "acts.npy", "r+b") as f:                               # flip bytes in the middle
        f.seek(4096); f.write(b"\xff" * 16)
    with pytest.raises(CorruptCacheError, match="corrupt"):
        load_activations(p)
    with open(p / "acts.npy", "r+b") as f: f.truncate(1000)              # and truncated
    with pytest.raises(CorruptCacheError):
        load_activations(p)
    p = cache_activations(*args, steps=[24], progress=False)[24]
    assert np.array_equal(load_activations(p).acts, good)

def test_changed_config_rebuilds_cache(tmp_path, micro, micro_run):
    root = tmp_path / "acts"
    stream = load_tokens(micro_run, "train")
    p = cache_activations(micro_run, micro.acts.hook, stream, 4096, root, steps=[8], progress=False)[8]
    n = load_activations(p).acts.shape[0]
    p = cache_activations(micro_run, micro.acts.hook, stream, 8192, root, steps=[8], progress=False)[8]
    assert load_activations(p).acts.shape[0] > n
