"The saetrack command: bad input ends with one line on stderr, exit code 2, and nothing half-written."
import subprocess, sys
import pytest
from saetrack.cli import main

def run_cli(*args):
    r = subprocess.run([sys.executable, "-c", "import sys; from saetrack.cli import main; sys.exit(main())", *map(str, args)], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr

def _one_line_error(capsys, argv, match):
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err

def test_help_lists_commands():
    code, out, _ = run_cli("--help")
    assert code == 0 and all(c in out for c in ("reproduce", "track", "lm", "activations", "figures", "info"))

def test_unknown_preset(capsys, tmp_path):
    _one_line_error(capsys, ["lm", "--preset", "huge", "--out", tmp_path / "r"], "unknown preset 'huge'")
    assert not (tmp_path / "r").exists()

@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_corpus(capsys, tmp_path, make):
    corpus = tmp_path / "corpus"
    if make == "empty": corpus.mkdir()
    _one_line_error(capsys, ["lm", "--preset", "micro", "--corpus", corpus, "--out", tmp_path / "r"], "corpus")
    assert not (tmp_path / "r").exists()

@pytest.mark.parametrize("hook,match", [("blocks.7.hook_resid_pre", "outside the model"),
                                        ("blocks.0.hook_nope", "not a hook of this model"),
                                        ("resid_pre", "not of the form")])
def test_bad_hook(capsys, micro_run, tmp_path, hook, match):
    _one_line_error(capsys, ["activations", "--preset", "micro", "--run", micro_run, "--hook", hook, "--out", tmp_path / "a", "--quiet"], match)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*.npy"))

def test_directory_without_checkpoints(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["activations", "--checkpoints", tmp_path / "empty", "--quiet"], "holds no checkpoints")

def test_step_not_in_run(capsys, micro_run, tmp_path):
    _one_line_error(capsys, ["activations", "--preset", "micro", "--run", micro_run, "--at-steps", "0,3", "--out", tmp_path / "a", "--quiet"],
                    "step 3 is not in")
    assert not (tmp_path / "a").exists()

def test_corrupt_cache_reported_then_rebuilt(capsys, micro_run, micro, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations"))
    assert main(["activations", "--preset", "micro", "--run", str(run), "--at-steps", "24", "--quiet"]) == 0
    f = run / "activations" / micro.acts.hook / "train" / "step24" / "acts.npy"
    with open(f, "r+b") as fh: fh.truncate(f.stat().st_size // 2)
    capsys.readouterr()
    _one_line_error(capsys, ["info", run], "corrupt")
    assert main(["activations", "--preset", "micro", "--run", str(run), "--at-steps", "24", "--quiet"]) == 0
    assert main(["info", str(run)]) == 0

def test_reproduce_micro(tmp_path):
    code, out, err = run_cli("reproduce", "--preset", "micro", "--out", tmp_path / "run", "--figures", tmp_path / "figs", "--quiet")
    assert code == 0, err
    assert "reproduce stage times" in out and "later SAEs median" in out and "verdicts:" in out
    import json
    rec = json.loads((tmp_path / "run" / "reproduce.json").read_text())
    times = rec["seconds"]
    from saetrack.config import get_preset
    assert rec["seeds"] == dict(lm=get_preset("micro").lm.seed, sae=get_preset("micro").sae.seed, analysis=0, figures=0)
    assert {"lm", "activations", "series", "analysis", "figures", "total"} <= set(times)
    assert times["total"] >= sum(v for k, v in times.items() if k != "total") - 1
    man = json.loads((tmp_path / "figs" / "MANIFEST.json").read_text())
    assert {"lm_loss.png", "sae_quality.pdf", "class_fractions.png"} <= set(man)
    for name, entry in man.items():
        assert (tmp_path / "figs" / name).stat().st_size > 5000 and entry["shows"] and entry["config_hash"]
    # the figures command alone regenerates them from the cache
    code, out, err = run_cli("figures", "--preset", "micro", "--out", tmp_path / "run", "--figures", tmp_path / "again")
    assert code == 0, err
    assert set(json.loads((tmp_path / "again" / "MANIFEST.json").read_text())) == set(man)
    # a one-recipe study at step 24 (from 16), so that the controls add (c): independent converged SAEs, 3 seeds at
    # every checkpoint the study has references at, the study's own reused
    from saetrack.config import get_preset
    from saetrack.convergence import PAPER, recipe_study
    run, p = tmp_path / "run", get_preset("micro")
    entries = lambda split: {s: run / "activations" / p.acts.hook / split / f"step{s}" for s in (16, 24)}
    recipe_study(p.sae, entries("train"), entries("eval"), run / "convergence", steps=[24], n_seeds=1, recipes=[PAPER], progress=False)
    ref = run / "convergence" / "refs" / "step24_seed42" / "sae_weights.safetensors"
    made = ref.stat().st_mtime_ns
    # the controls: three more chains analysed like the series, then drawn by `figures` beside it
    code, out, err = run_cli("controls", "--preset", "micro", "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    assert "per-link angle, median (deg)" in out and "features that change pattern" in out
    res = json.loads((tmp_path / "run" / "controls" / "controls.json").read_text())
    assert set(res["chains"]) == {"series", "paper", "null", "backward"}
    assert res["chains"]["null"]["tokens"] == res["chains"]["series"]["tokens"]          # same optimiser budget
    rows = res["independent"]["rows"]
    assert [r["step"] for r in rows] == [16, 24] and all(r["n_seeds"] == 3 for r in rows)
    assert all(0 < r["seed_floor"] <= 1 and abs(sum(r["independent_fractions"]) - 1) < 1e-3 for r in rows)
    assert ref.stat().st_mtime_ns == made                                                # the study's seed, not retrained
    assert len(list((run / "convergence" / "refs").glob("step*_seed4[34]/sae_weights.safetensors"))) == 4
    code, out, err = run_cli("figures", "--preset", "micro", "--out", tmp_path / "run", "--figures", tmp_path / "again")
    assert code == 0, err
    assert {"controls.png", "controls.pdf"} <= set(json.loads((tmp_path / "again" / "MANIFEST.json").read_text()))

@pytest.mark.parametrize("case", ["missing analysis", "stale analysis", "stale baseline"])
def test_figures_only_read_the_caches(capsys, tmp_path, micro_tracked, case):
    "`figures` computes nothing: a missing or stale cache is one line naming the command, and nothing is written."
    import json, shutil
    out = tmp_path / "run"
    shutil.copytree(micro_tracked, out)
    if case == "missing analysis":
        shutil.rmtree(out / "analysis")
        match = f"no cached analysis under '{out / 'analysis'}'; run `saetrack analyse --out {out}` first"
    elif case == "stale analysis":
        meta = json.loads((out / "analysis" / "analysis.json").read_text())
        meta["config"]["k"] += 1                                       # not the settings its key was made with
        (out / "analysis" / "analysis.json").write_text(json.dumps(meta))
        match = f"rerun `saetrack analyse --out {out}`"
    else:
        (out / "baseline").mkdir()
        (out / "baseline" / "baseline.json").write_text(json.dumps(dict(key="another series", steps=[0, 24], seeds=[43, 44])))
        match = f"rerun `saetrack baseline --out {out}`"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    _one_line_error(capsys, ["figures", "--preset", "micro", "--out", out, "--figures", tmp_path / "figs"], match)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before and not (tmp_path / "figs").exists()

def test_convergence_and_controls_need_a_run(tmp_path, capsys):
    _one_line_error(capsys, ["convergence", "--preset", "micro", "--out", tmp_path], "saetrack track")
    _one_line_error(capsys, ["controls", "--preset", "micro", "--out", tmp_path], "saetrack track")
    _one_line_error(capsys, ["track", "--preset", "micro", "--out", tmp_path / "x", "--budget", "sometimes"], "--budget")

def test_pythia_dry_run_prints_the_papers_plan(capsys):
    assert main(["reproduce", "--preset", "pythia-410m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "29 SAEs" in out and "720,000,000 in all" in out and "65,536 latents" in out and "blocks.4.hook_resid_pre" in out
    assert "10 d_in d_sae per token" in out and "483 PFLOP" in out and "1.62 TiB" in out
    _one_line_error(capsys, ["reproduce", "--preset", "pythia-1.4b"], "saetrack track --preset pythia-1.4b --device cuda")
    _one_line_error(capsys, ["reproduce", "--preset", "micro", "--dry-run"], "--dry-run is for the Pythia presets")

def test_sae_flags_are_distinct_from_the_lms_and_win_over_the_recipe():
    from saetrack.cli import _preset, build_parser
    parse = lambda *a: _preset(build_parser().parse_args(["track", *a]))
    p = parse("--preset", "micro", "--sae-lr", "1e-3", "--sae-lr-next", "2e-4", "--sae-warmup", "0.1", "--sae-warmup-next", "7",
              "--tokens-first", "65536", "--tokens-next", "8192", "--sae-batch", "128", "--sae-batch-next", "32", "--epochs", "12",
              "--l1", "2e-3", "--lm-lr", "5e-3", "--lm-steps", "16")
    s = p.sae
    assert (s.lr_first, s.lr_next, s.warmup_first, s.warmup_next, s.tokens_first, s.tokens_next, s.batch_size, s.batch_next,
            s.epochs, s.l1_coefficient) == (1e-3, 2e-4, 0.1, 7, 65536, 8192, 128, 32, 12, 2e-3)
    assert (p.lm.lr, p.lm.steps) == (5e-3, 16)                       # --lm-lr is the LM's, not the SAE's
    assert parse("--preset", "micro", "--tokens-first", "65536").sae.tokens_next == 16384
    fixed = parse("--preset", "micro", "--budget", "fixed", "--sae-lr-next", "1e-3").sae
    assert fixed.budget == "fixed" and fixed.lr_next == 1e-3 and fixed.tokens_next == fixed.tokens_first // 20
    with pytest.raises(SystemExit): build_parser().parse_args(["track", "--lr", "1e-3"])     # the ambiguous flag is gone

def test_pythia_presets_are_the_papers_recipe():
    from saetrack.cli import _preset, build_parser
    p = _preset(build_parser().parse_args(["track", "--preset", "pythia-410m"]))
    s = p.sae
    assert p.checkpoints == "pythia-410m-deduped" and len(p.steps) == 29 and p.acts.hook == "blocks.4.hook_resid_pre"
    assert (s.d_sae, s.l1_coefficient, s.batch_size, s.batch_next, s.budget) == (65536, 8e-5, 4096, None, "fixed")
    assert (s.lr_first, s.warmup_first, s.tokens_first) == (4e-4, 5000, 300_000_000)
    assert (s.lr_next, s.warmup_next, s.tokens_next, s.carry_adam, s.refit_b_dec) == (4e-5, 3, 15_000_000, False, False)

def test_data_reuse_is_refused_before_any_work_and_allowed_explicitly(capsys, micro_run, tmp_path):
    _one_line_error(capsys, ["track", "--preset", "micro", "--out", tmp_path / "r", "--tokens-first", "1000000", "--quiet"],
                    "passes over the 8,184 activations")
    assert not (tmp_path / "r").exists()
    _one_line_error(capsys, ["track", "--preset", "pythia-410m", "--out", tmp_path / "p", "--quiet"], "(--epochs 20)")
    assert not (tmp_path / "p").exists()
    import shutil
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations"))
    assert main(["track", "--preset", "micro", "--out", str(run), "--at-steps", "0,8,24", "--tokens-first", "262144",
                 "--tokens-next", "16384", "--epochs", "33", "--quiet"]) == 0
    from saetrack.series import SAESeries
    s = SAESeries.load(run / "series")
    assert s.steps == [0, 8, 24] and s.manifest["config"]["epochs"] == 33
    assert sorted(p.name for p in (run / "activations" / "blocks.1.hook_resid_pre" / "train").iterdir()) == ["step0", "step24", "step8"]

def _nothing_left(root):
    "No lock file and no temporaries anywhere under `root`."
    left = [p for p in root.rglob("*") if p.name == ".lock" or p.name.endswith(".tmp")]
    assert not left, left

@pytest.mark.parametrize("argv,match,fresh", [
    (["lm", "--out", "{f}"], "--out '{f}' is a file, not a directory", None),
    (["track", "--out", "{f}"], "--out '{f}' is a file, not a directory", None),
    (["track", "--out", "{f}/sub"], "lies under the file", None),
    (["track", "--out", "{t}/r", "--d-sae", "0"], "--d-sae must be positive (got 0)", "r"),
    (["track", "--out", "{t}/r", "--d-sae", "-8"], "--d-sae must be positive (got -8)", "r"),
    (["track", "--out", "{t}/r", "--l1", "-1"], "L1 coefficient must be >= 0 (got --l1 -1.0)", "r"),
    (["track", "--out", "{t}/r", "--tokens-first", "2048"], "warm-up of 16 steps does not fit its 8 optimiser steps", "r"),
    (["track", "--out", "{t}/r", "--tokens", "0"], "--tokens must be positive", "r"),
    (["track", "--out", "{t}/r", "--sae-lr", "0"], "SAE learning rates must be positive (got --sae-lr 0.0)", "r"),
    (["lm", "--out", "{t}/r", "--lm-lr", "-1"], "learning rate must be positive (got --lm-lr -1.0)", "r"),
    (["lm", "--out", "{t}/r", "--lm-seed", "-1"], "--lm-seed -1", "r"),
    (["lm", "--out", "{t}/r", "--max-bytes", "-5"], "--max-bytes must be positive", "r"),
    (["lm", "--out", "{t}/r", "--ctx", "0"], "--ctx must be positive", "r"),
    (["figures", "--out", "{t}/empty", "--figures", "{f}"], "--figures '{f}' is a file", None),
    (["figures", "--out", "{t}/empty", "--figures", "{t}/figs"], "run `saetrack reproduce --out {t}/empty`", "figs"),
    (["reproduce", "--out", "{t}/r", "--figures", "{f}"], "--figures '{f}' is a file", "r"),
])
def test_bad_input_is_one_line_and_leaves_nothing(capsys, tmp_path, argv, match, fresh):
    f = tmp_path / "file"; f.write_text("not a directory"); (tmp_path / "empty").mkdir()
    fill = lambda s: s.format(f=f, t=tmp_path)
    _one_line_error(capsys, [fill(a) for a in [argv[0], "--preset", "micro", "--quiet", *argv[1:]]], fill(match))
    if fresh: assert not (tmp_path / fresh).exists()
    assert f.read_text() == "not a directory" and not any((tmp_path / "empty").iterdir())
    _nothing_left(tmp_path)

def test_scaling_root_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["scaling", "--root", tmp_path / "file", "--quiet"], "--root")

def test_unwritable_out(capsys, tmp_path, monkeypatch):
    "An --out where nothing can be written (read-only, or another user's): one line before any work."
    import os
    ro = tmp_path / "ro"; ro.mkdir(); (ro / "run" / "series").mkdir(parents=True); (ro / "run" / "series" / "series.json").write_text("{}")
    if os.geteuid() != 0:                       # a real read-only directory (root writes through chmod)
        ro.chmod(0o555); (ro / "run").chmod(0o555)
    else:                                       # as root, chmod blocks nothing: what os.access would say for another user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(ro)) else real(p, mode, **k))
    try:
        _one_line_error(capsys, ["lm", "--preset", "micro", "--out", ro / "new", "--quiet"], "cannot write in")
        _one_line_error(capsys, ["analyse", "--preset", "micro", "--out", ro / "run", "--quiet"], "cannot write in")
        assert not (ro / "new").exists() and sorted(p.name for p in (ro / "run").iterdir()) == ["series"]
    finally:
        ro.chmod(0o755); (ro / "run").chmod(0o755)

def test_max_bytes_reads_a_directory_of_large_files(capsys, tmp_path):
    from saetrack.cli import _preset, build_parser
    from saetrack.lm import lm_split
    corpus = tmp_path / "big"; corpus.mkdir()
    for i in range(3): (corpus / f"f{i}.txt").write_text(f"document {i} " + "word " * 100_000)     # 500 kB each
    _one_line_error(capsys, ["lm", "--preset", "micro", "--corpus", corpus, "--out", tmp_path / "r", "--quiet"], "raise --max-bytes")
    assert not (tmp_path / "r").exists()
    parse = lambda *a: _preset(build_parser().parse_args(["track", "--preset", "micro", "--corpus", str(corpus), *a])).lm
    assert parse("--max-bytes", "0").corpus_max_bytes is None and parse("--max-bytes", "1200000").corpus_max_bytes == 1_200_000
    c, train, ev = lm_split(parse("--max-bytes", "0")).load()
    assert len(c.docs) == 3 and train and ev

def test_version(capsys):
    import saetrack
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"saetrack {saetrack.__version__}"


def test_every_flag_names_one_config_field():
    "config.FLAGS is the one table from settings to flags: real fields, one flag per setting, each accepted by `track`."
    import dataclasses
    from saetrack import config
    from saetrack.cli import build_parser
    parser = build_parser()
    track = parser._subparsers._group_actions[0].choices["track"]
    known = {s for act in track._actions for s in act.option_strings}
    for cls, table in config.FLAGS.items():
        fields = {f.name for f in dataclasses.fields(getattr(config, cls))}
        assert set(table) <= fields, (cls, set(table) - fields)
        assert len(set(table.values())) == len(table), cls                  # one flag per setting
        assert set(table.values()) <= known, (cls, set(table.values()) - known)
    flags = [(cls, f) for cls, t in config.FLAGS.items() for f in t.values()]
    shared = {f for _, f in flags if sum(g == f for _, g in flags) > 1}
    assert shared == {"--corpus"}                # the one setting two configs share: the text the LM and activations read
    # a flag reaches its field
    a = parser.parse_args(["track", "--preset", "micro", "--sae-lr", "0.002", "--lm-lr", "0.01", "--tokens", "8192", "--l1", "3"])
    from saetrack.cli import _preset
    p = _preset(a)
    assert (p.sae.lr_first, p.lm.lr, p.acts.train_tokens, p.sae.l1_coefficient) == (0.002, 0.01, 8192, 3.0)
