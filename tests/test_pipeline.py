"End to end on the micro preset: corpus -> tokenizer -> training -> checkpoints -> TransformerLens -> activations."
import json
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from saetrack.activations import load_activations, token_rows
from saetrack.checkpoints import open_source
from saetrack.config import checkpoint_steps
from saetrack.lm import saved_steps, STATE
from saetrack.layout import step_dir

def test_run_layout(micro_run, micro):
    cfg = micro.lm
    assert saved_steps(micro_run) == checkpoint_steps(cfg.steps, cfg.log_until, cfg.ckpt_every)
    meta = json.loads((micro_run / "run.json").read_text())
    assert meta["corpus"]["name"].startswith("stdlib") and len(meta["corpus"]["sha256"]) == 64
    assert meta["tokens"]["train"] > 10 * meta["tokens"]["eval"] > 0
    log = json.loads((micro_run / "log.json").read_text())
    assert log["complete"] and len(log["train_loss"]) == cfg.steps
    assert set(log["eval"]) == {str(s) for s in saved_steps(micro_run)}
    assert log["eval"][str(cfg.steps)] < log["eval"]["0"] - 0.3          # it learned something
    assert not any((step_dir(micro_run, s) / STATE).exists() for s in saved_steps(micro_run))

def test_checkpoint_is_a_plain_hf_model_dir(micro_run, micro):
    d = step_dir(micro_run, micro.lm.steps)
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert type(model).__name__ == "GPTNeoXForCausalLM" and model.config.use_parallel_residual
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert tok.eos_token_id == 0 and tok.decode(tok("x = 1\n")["input_ids"]) == "x = 1\n"

def test_transformerlens_matches_hf(micro_run):
    src = open_source(micro_run)
    for step in (0, src.steps[-1]):
        hf, tl = src.hf_model(step), src.hooked(step)
        x = torch.randint(0, tl.cfg.d_vocab, (3, 24), generator=torch.Generator().manual_seed(step))
        with torch.no_grad():
            lp_hf, lp_tl = hf(x).logits.log_softmax(-1), tl(x).log_softmax(-1)
        assert (lp_hf - lp_tl).abs().max().item() < 1e-4
        # centred unembedding shifts logits by a per-position constant only
        with torch.no_grad():
            a, b = hf(x).logits, tl(x)
        assert ((a - a.mean(-1, keepdim=True)) - (b - b.mean(-1, keepdim=True))).abs().max().item() < 1e-4
    # LayerNorm folded: the TL blocks have no LN weights left to apply
    assert tl.cfg.normalization_type == "LNPre"

def test_activations_match_direct_forward(micro_run, micro, micro_acts):
    src = open_source(micro_run)
    step = src.steps[-1]
    e = load_activations(micro_acts[step])
    n_rows, ctx = e.tokens.shape
    assert e.acts.shape == (n_rows * (ctx - 1), 32) and e.acts.dtype == np.float32
    assert (e.tokens[:, 0] == 0).all()                                  # BOS first, not stored
    tl = src.hooked(step)
    _, cache = tl.run_with_cache(torch.from_numpy(np.array(e.tokens[:4])).long())
    ref = cache[micro.acts.hook][:, 1:, :].reshape(-1, 32).numpy()
    np.testing.assert_allclose(e.acts[:len(ref)], ref, atol=1e-5)
    row, pos = e.context(ctx - 1)                                       # first activation of row 1
    assert (row, pos) == (1, 1)

def test_reloaded_identical(micro_acts):
    for p in micro_acts.values():
        a, b = load_activations(p), load_activations(p)
        assert np.array_equal(a.acts, b.acts) and np.array_equal(a.tokens, b.tokens)
    tokens = [load_activations(p).tokens for p in micro_acts.values()]
    assert all(np.array_equal(tokens[0], t) for t in tokens)            # same contexts at every checkpoint

def test_token_rows():
    stream = np.arange(1, 101)
    r = token_rows(stream, 20, 5)
    assert r.shape == (5, 5) and (r[:, 0] == 0).all() and r[1, 1] == 5 and r[-1, -1] == 20

def test_each_checkpoint_is_loaded_once_per_harvest(micro_run, micro, tmp_path, monkeypatch):
    "Both splits of a checkpoint are harvested from one load of its model."
    import shutil
    from saetrack.checkpoints import LocalRun
    from saetrack.pipeline import activations_for
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations"))
    loads, real = [], LocalRun.hf_model
    monkeypatch.setattr(LocalRun, "hf_model", lambda self, step: loads.append(step) or real(self, step))
    tr, ev = activations_for(LocalRun(run), micro, run / "activations", progress=False)
    assert sorted(tr[micro.acts.hook]) == sorted(ev[micro.acts.hook]) == [0, 1, 2, 4, 8, 16, 24] and sorted(loads) == [0, 1, 2, 4, 8, 16, 24]
