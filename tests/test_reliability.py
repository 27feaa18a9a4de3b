"Determinism, resuming and corrupt caches."
import numpy as np
import pytest
from saetrack.activations import cache_activations, load_activations
from saetrack.config import get_preset
from saetrack.core import AVX2_KERNELS as PIN, CorruptCacheError, SaetrackError, cpu_kernels, file_sha256
from saetrack.lm import saved_steps, train_lm, load_tokens, STATE
from saetrack.layout import step_dir

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
    (run / ".explorer.0db842ce.tmp").mkdir()                            # another stage's write in progress (CI, stop 22)
    log = train_lm(micro.lm, run, progress=False)
    assert log["complete"] and [p.name for p in run.glob(".*.tmp")] == [".explorer.0db842ce.tmp"]
    assert _weights(run) == _weights(micro_run)

def test_resume_at_another_thread_count_says_so(tmp_path, micro, micro_run, capfd):
    """CPU float sums follow the thread count: the LM resumed at another count gets other bits (measured: micro at 1 and
    2 threads differs from step 1 on), so the run records each session's count and the resume warns in one line."""
    import torch
    from saetrack.lm import run_log
    run, n = tmp_path / "threads", torch.get_num_threads()
    torch.set_num_threads(n + 1)
    try: train_lm(micro.lm, run, progress=False, stop_after=11)
    finally: torch.set_num_threads(n)
    capfd.readouterr()
    train_lm(micro.lm, run, progress=False)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: the LM of {run} resumes at {n} CPU thread") and f"OMP_NUM_THREADS={n + 1}" in err[0]
    assert run_log(run)["threads"] == {"0": n + 1, "8": n}
    assert _weights(run)[0] == _weights(micro_run)[0]                      # step 0 precedes any sum over a batch
    # a resume at the training's own count is silent
    again = tmp_path / "same"
    train_lm(micro.lm, again, progress=False, stop_after=11); capfd.readouterr()
    train_lm(micro.lm, again, progress=False)
    assert capfd.readouterr().err == "" and run_log(again)["threads"] == {"0": n, "8": n}
    assert run_log(again)["kernels"] == {"0": cpu_kernels(), "8": cpu_kernels()}

_STEP = """import hashlib, sys, torch
from saetrack.config import get_preset
from saetrack.core import cpu_kernels
from saetrack.lm import build_model
cfg = get_preset("micro").lm
torch.manual_seed(0)
m = build_model(cfg, cfg.vocab_size); opt = torch.optim.AdamW(m.parameters(), lr=cfg.lr)
x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.ctx))
for _ in range(3): m(input_ids=x, labels=x).loss.backward(); opt.step(); opt.zero_grad()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest(), cpu_kernels())
"""

def _lm_steps(**env) -> tuple[str, str]:
    "Three micro-LM training steps in a fresh process under `env`: (sha256 of the weights, the kernels `record_cpu` notes)."
    import os, subprocess, sys
    clean = {k: v for k, v in os.environ.items() if k not in PIN}
    out = subprocess.run([sys.executable, "-c", _STEP], env=dict(clean, **env), capture_output=True, text=True, check=True)
    digest, kernels = out.stdout.strip().split(" ", 1)
    return digest, kernels

def test_cpu_kernels_are_recorded_because_they_change_the_bits():
    """The same seed trains the same bits in fresh processes on the same kernels; on other kernels (this CPU's own
    AVX-512 ones against AVX2's) it trains other bits, and the kernels a run records say which it was."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"): pytest.skip("AVX2 kernels exist on x86 CPUs only")
    pinned = _lm_steps(**PIN)
    assert pinned == _lm_steps(**PIN) and pinned[1] == "AVX2 (MKL AVX2)"
    native = _lm_steps()
    assert native[1] == cpu_kernels()                                    # a plain process records its own kernels
    if native[1].startswith("AVX512"):
        assert native[0] != pinned[0] and native[1] != pinned[1]


def test_resume_never_starts_from_corrupt_weights(tmp_path, micro, micro_run):
    run = tmp_path / "resumed"
    train_lm(micro.lm, run, progress=False, stop_after=11)            # killed after step 11: resumes from step 8
    w = step_dir(run, 8) / "model.safetensors"
    b = bytearray(w.read_bytes()); b[-7] ^= 0x01; w.write_bytes(bytes(b))   # one flipped bit in the resume point
    log = train_lm(micro.lm, run, progress=False)                      # restarts at 0 instead of resuming from it
    assert log["complete"] and _weights(run) == _weights(micro_run)

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

# --- state on disk: verified as it is read (issue 17) ---
import shutil, subprocess, sys
from saetrack.cli import main

def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst

def _error(capsys, argv, match):
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err

def test_changed_sae_config_is_refused_not_replaced(capsys, micro_tracked):
    before = (micro_tracked / "series" / "series.json").read_text()
    _error(capsys, ["track", "--preset", "micro", "--out", micro_tracked, "--l1", "0.01", "--quiet"],
           "another SAE config (l1_coefficient 0.001 -> 0.01); use a new --out, or delete")
    assert (micro_tracked / "series" / "series.json").read_text() == before and not (micro_tracked / ".lock").exists()

@pytest.mark.parametrize("damaged,argv,match", [
    ("run.json", ["track"], "run.json' is damaged"),
    ("log.json", ["track"], "log.json' is damaged (JSONDecodeError); delete it and rerun `saetrack lm"),
    ("log.json", ["figures", "--figures", "{out}/figs"], "log.json' is damaged"),
    ("series/series.json", ["analyse"], "series.json' is damaged; rerun `saetrack track`"),
    ("step0/config.json", ["track"], "step0/ (config.json is not valid JSON)"),     # the first, a middle and the last
    ("step8/config.json", ["track"], "step8/ (config.json is not valid JSON)"),     # checkpoint of saetrack's own run
    ("step24/config.json", ["track"], "step24/ (config.json is not valid JSON)"),
])
def test_damaged_state_file_is_one_line(capsys, tmp_path, micro_tracked, damaged, argv, match):
    out = _copy(micro_tracked, tmp_path / "run")
    (out / damaged).write_text("{garbage")
    _error(capsys, [argv[0], "--preset", "micro", "--out", out, "--quiet", *[a.format(out=out) for a in argv[1:]]], str(match))

@pytest.mark.parametrize("damaged", ["series/series.json", "series/step8/cfg.json", "analysis/analysis.npz", "analysis/analysis.json"])
def test_damaged_cache_is_rebuilt(tmp_path, micro_tracked, damaged):
    from saetrack.analysis import cached_analysis
    from saetrack.series import SAESeries
    out = _copy(micro_tracked, tmp_path / "run")
    good = (out / damaged).read_bytes()
    bad = good[:len(good) // 3] if damaged.endswith(".npz") else b"{garbage"
    (out / damaged).write_bytes(bad)
    argv = ["analyse"] if damaged.startswith("analysis") else ["track"]
    assert main([*argv, "--preset", "micro", "--out", str(out), "--quiet"]) == 0
    s = SAESeries.load(out / "series")
    assert [file_sha256(s.dir(t) / "sae_weights.safetensors") for t in s.steps] == \
           [file_sha256(micro_tracked / "series" / f"step{t}" / "sae_weights.safetensors") for t in s.steps]   # retrained, bit-identical
    assert cached_analysis(out)["n_features"] == 128 and (out / damaged).read_bytes() != bad

def test_second_process_is_refused_while_the_first_holds_the_run(capsys, tmp_path, micro_run, micro_tracked):
    out = _copy(micro_tracked, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\nf = open(sys.argv[1], 'a+')\n"
                               "fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)",
                               str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        for argv in (["lm"], ["activations", "--run", micro_run], ["track"], ["convergence"], ["controls"], ["analyse"],
                     ["explore", "3"], ["explorer"], ["baseline"], ["figures", "--figures", tmp_path / "figs"],
                     ["reproduce", "--figures", tmp_path / "figs"]):
            _error(capsys, [*argv, "--preset", "micro", "--out", out, "--quiet"],
                   f"run directory {out} is in use by another saetrack process (pid {holder.pid}); wait for it or use another --out")
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and not (tmp_path / "figs").exists()
    finally:
        holder.kill(); holder.wait()
    assert main(["analyse", "--preset", "micro", "--out", str(out), "--quiet"]) == 0 and not (out / ".lock").exists()

def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_rerun(tmp_path, micro, micro_run):
    from saetrack.lm import prepare_data
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(micro_run / "run.json", out)                           # what a run that died before step 0 leaves
    for name in ("tokens", "tokenizer"): shutil.copytree(micro_run / name, out / name)
    meta = prepare_data(get_preset("micro", lr=2e-3).lm, out, progress=False)
    assert meta["config"]["lr"] == 2e-3
