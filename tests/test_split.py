"""The activations' train/eval split is the one the LM was trained and evaluated on (issue 16, item 1): defined once,
with the run, and read back, never re-derived with defaults of its own."""
import shutil, sysconfig
from dataclasses import replace
from pathlib import Path
import numpy as np
import pytest
from saetrack.activations import load_activations
from saetrack.config import get_preset
from saetrack.core import read_json
from saetrack.corpus import load_corpus
from saetrack.lm import load_tokens, train_lm
from saetrack.pipeline import activations_for
from saetrack.tokenizer import encode_docs, load_tokenizer

SEED, EVAL_FRAC, MAX_BYTES = 7, 0.25, 350_000      # none of them the defaults (seed 0, 5%, the whole corpus)

@pytest.fixture(scope="module")
def preset():
    return get_preset("micro", seed=SEED, eval_frac=EVAL_FRAC, corpus_max_bytes=MAX_BYTES, steps=8)

@pytest.fixture(scope="module")
def run(tmp_path_factory, preset):
    run = tmp_path_factory.mktemp("split") / "run"
    train_lm(preset.lm, run, progress=False)
    return run

@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    "Another corpus: 60 standard-library modules copied into a directory."
    d = tmp_path_factory.mktemp("other")
    lib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(lib.glob("*.py"))[-60:]: shutil.copy(f, d / f.name)
    return str(d)

def _stream(entry) -> np.ndarray:
    "The tokens an activation cache entry was harvested on, BOS removed, in order."
    return np.asarray(load_activations(entry).tokens)[:, 1:].ravel()

def _harvest(source, preset, root, corpus):
    preset = replace(preset, acts=replace(preset.acts, corpus=corpus))
    tr, ev = activations_for(source, preset, root, steps=[preset.lm.steps], progress=False)
    return _stream(tr[preset.acts.hook][preset.lm.steps]), _stream(ev[preset.acts.hook][preset.lm.steps])

def test_explicit_corpus_of_the_run_gives_the_runs_split(run, preset, tmp_path):
    "`--corpus` naming the run's own corpus: the activations' eval tokens are the run's held-out documents."
    tr, ev = _harvest(run, preset, tmp_path / "acts", corpus=preset.lm.corpus)
    train_docs, eval_docs = load_corpus(preset.lm.corpus, MAX_BYTES).split(EVAL_FRAC, SEED)   # the run's split
    tok = load_tokenizer(run / "tokenizer")
    assert np.array_equal(ev, encode_docs(tok, eval_docs)[:len(ev)])
    assert np.array_equal(tr, encode_docs(tok, train_docs)[:len(tr)])
    assert np.array_equal(ev, load_tokens(run, "eval")[:len(ev)])       # what the LM's eval loss was measured on
    assert np.array_equal(tr, load_tokens(run, "train")[:len(tr)])
    from saetrack.activations import token_stream
    for split in ("train", "eval"):                                     # the whole streams, not just their starts
        assert np.array_equal(token_stream(run, split, corpus=preset.lm.corpus)[0], load_tokens(run, split))

def test_no_corpus_gives_the_runs_tokens(run, preset, tmp_path):
    "Without `--corpus` (the default pipeline): the run's own token streams, as always."
    tr, ev = _harvest(run, preset, tmp_path / "acts", corpus=None)
    assert np.array_equal(ev, load_tokens(run, "eval")[:len(ev)])
    assert np.array_equal(tr, load_tokens(run, "train")[:len(tr)])

def test_another_corpus_is_split_with_the_runs_settings(run, preset, other_corpus, tmp_path):
    "A different corpus is split as the run split its own: the run's byte limit, eval fraction and seed."
    tr, ev = _harvest(run, preset, tmp_path / "acts", corpus=other_corpus)
    train_docs, eval_docs = load_corpus(other_corpus, MAX_BYTES).split(EVAL_FRAC, SEED)
    tok = load_tokenizer(run / "tokenizer")
    assert np.array_equal(ev, encode_docs(tok, eval_docs)[:len(ev)])
    assert np.array_equal(tr, encode_docs(tok, train_docs)[:len(tr)])
    from saetrack.activations import token_stream
    assert np.array_equal(token_stream(run, "eval", corpus=other_corpus)[0], encode_docs(tok, eval_docs))

def test_foreign_checkpoints_record_their_split_and_read_it_back(run, preset, other_corpus, tmp_path):
    "Checkpoints without run.json: the split is recorded beside the cache at the first harvest and read back after."
    from saetrack.activations import token_stream
    ext = tmp_path / "ext"
    shutil.copytree(run / f"step{preset.lm.steps}", ext / f"step{preset.lm.steps}")   # no run.json, no tokens/
    root = tmp_path / "acts"
    tr, ev = _harvest(ext, preset, root, corpus=other_corpus)
    rec = read_json(root / "split.json")
    assert rec["split"] == dict(corpus=other_corpus, max_bytes=None, eval_frac=0.05, seed=0)
    tok = load_tokenizer(run / "tokenizer")
    assert np.array_equal(ev, encode_docs(tok, load_corpus(other_corpus).split(0.05, 0)[1])[:len(ev)])
    again, _ = token_stream(ext, "eval", None, root)            # no corpus named: the recorded one, not stdlib
    assert np.array_equal(again[:len(ev)], ev)
    rec["split"]["eval_frac"] = 0.3                              # the record is what defines the split
    (root / "split.json").write_text(__import__("json").dumps(rec))
    held = load_corpus(other_corpus).split(0.3, 0)[1]
    assert np.array_equal(token_stream(ext, "eval", None, root)[0], encode_docs(tok, held))

def test_default_caches_keep_their_keys(run, preset, tmp_path):
    "The cache key of a run harvested without `--corpus` is what it always was (caches are not invalidated)."
    from saetrack.activations import CACHE_VERSION, rows_hash, token_rows
    from saetrack.checkpoints import TL_PROCESSING, open_source
    from saetrack.core import stable_hash
    src, step = open_source(run), preset.lm.steps
    tr, ev = activations_for(src, preset, tmp_path / "acts", steps=[step], progress=False)
    for split, res, n in (("train", tr, preset.acts.train_tokens), ("eval", ev, preset.acts.eval_tokens)):
        rows = token_rows(load_tokens(run, split), n, preset.lm.ctx)
        key = stable_hash(dict(v=CACHE_VERSION, source=src.identity(step), hook=preset.acts.hook, split=split,
                               dtype=preset.acts.dtype, rows=rows_hash(rows), processing=TL_PROCESSING))
        assert load_activations(res[preset.acts.hook][step]).manifest["key"] == key


def test_package_corpus_reads_an_installed_packages_source():
    from saetrack.core import SaetrackError
    c = load_corpus("package:json")
    assert c.name == "package:json" and c.ids == ["__init__.py", "decoder.py", "encoder.py", "scanner.py", "tool.py"]
    assert c.docs[1] == (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text()
    for bad in ("package:no_such_package_xyz", "package:not a name"):
        with pytest.raises(SaetrackError, match="needs an installed Python package"):
            load_corpus(bad)
