"Checkpoint sources: Trainer and Pythia layouts, GPT-NeoX / GPT-2 / Llama through TransformerLens, unloadable and corrupt checkpoints."
import json, shutil
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from saetrack.activations import cache_activations
from saetrack.checkpoints import open_source
from saetrack.cli import main
from saetrack.core import CorruptCacheError, SaetrackError, file_sha256, read_json
from saetrack.lm import build_model, load_tokens, train_lm
from saetrack.layout import step_dir
from saetrack.tokenizer import load_tokenizer

SUPPORTED = "gpt_neox, gpt2, llama"

def max_dlogp(hf, tl, vocab: int) -> float:
    "Largest |log p_HF - log p_TL| over a few random tokens (the unembedding is centred, so logits differ by a constant)."
    x = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(): return (hf(x).logits.log_softmax(-1) - tl(x).log_softmax(-1)).abs().max().item()

@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory, micro_run, micro):
    "A tiny GPT-NeoX trained for 6 steps by `transformers.Trainer`, saving checkpoint-2/4/6 with the run's tokenizer."
    from transformers import Trainer, TrainingArguments
    out = tmp_path_factory.mktemp("trainer") / "run"
    tok = load_tokenizer(micro_run / "tokenizer")
    rows = np.asarray(load_tokens(micro_run, "train")[:24 * 17], dtype=np.int64).reshape(24, 17)
    data = [dict(input_ids=torch.from_numpy(r), labels=torch.from_numpy(r)) for r in rows]
    args = TrainingArguments(str(out), max_steps=6, save_steps=2, per_device_train_batch_size=4, learning_rate=3e-3,
                             report_to=[], use_cpu=True, logging_strategy="no", disable_tqdm=True, seed=0)
    Trainer(model=build_model(micro.lm, len(tok)), args=args, train_dataset=data, processing_class=tok).train()
    return out

def test_trainer_checkpoints_load(trainer_run, micro_run):
    assert sorted(p.name for p in trainer_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    src = open_source(trainer_run)
    assert src.steps == [2, 4, 6] and src.skipped == []
    assert len({src.identity(s) for s in src.steps}) == 3                       # three different sets of weights
    assert src.tokenizer(4).get_vocab() == load_tokenizer(micro_run / "tokenizer").get_vocab()
    hf = AutoModelForCausalLM.from_pretrained(trainer_run / "checkpoint-6").eval()
    assert max_dlogp(hf, src.hooked(6), hf.config.vocab_size) < 1e-4

def test_step_from_trainer_state_must_agree(trainer_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trainer_run / "checkpoint-4", run / "checkpoint-4")
    st = read_json(run / "checkpoint-4" / "trainer_state.json"); st["global_step"] = 5
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps(st))
    with pytest.raises(SaetrackError, match=r"checkpoint-4/ \(trainer_state.json says global_step 5\)"):
        open_source(run)

def _save_steps(run, make, steps, tok):
    "Checkpoints `step<N>/` of freshly initialised models (one seed per step), the tokenizer at the run's root only."
    for s in steps:
        torch.manual_seed(s)
        make().save_pretrained(run / f"step{s}")
    tok.save_pretrained(run)

ARCHS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                               bos_token_id=0, eos_token_id=0)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                                  bos_token_id=0, eos_token_id=0)),
}

@pytest.mark.parametrize("arch", list(ARCHS))
def test_other_architectures(arch, micro_run, micro, tmp_path):
    run = tmp_path / arch
    tok = load_tokenizer(micro_run / "tokenizer")
    tok.bos_token = "<|padding|>"                                               # a BOS other than Pythia's 0
    _save_steps(run, ARCHS[arch], (0, 5), tok)
    src = open_source(run)
    assert src.steps == [0, 5] and src.tokenizer() is not None                 # the tokenizer at the run's root
    hf = AutoModelForCausalLM.from_pretrained(run / "step5").eval()
    assert hf.config.model_type == arch and max_dlogp(hf, src.hooked(5), 512) < 1e-4
    d = cache_activations(src, micro.acts.hook, load_tokens(micro_run, "train"), 310, tmp_path / "acts", steps=[5], progress=False)[5]
    assert np.load(d / "acts.npy").shape == (310, 32)
    assert (np.load(d / "tokens.npy")[:, 0] == tok.bos_token_id).all() and tok.bos_token_id == 1   # rows start with its BOS

def test_unsupported_architecture_refused_before_weights(tmp_path):
    run = tmp_path / "bert"
    (run / "step0").mkdir(parents=True)
    (run / "step0" / "config.json").write_text(json.dumps(dict(model_type="bert", architectures=["BertForMaskedLM"])))
    (run / "step0" / "model.safetensors").write_bytes(b"not weights: never read")
    with pytest.raises(SaetrackError, match=f"'bert' model .* saetrack loads {SUPPORTED} checkpoints"):
        open_source(run)

@pytest.fixture
def damaged_run(micro_run, tmp_path):
    "The micro run with step1 missing config.json, step2's config.json garbage and step4 without weights."
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations", "series"))
    (step_dir(run, 1) / "config.json").unlink()
    (step_dir(run, 2) / "config.json").write_text("{ not json")
    (step_dir(run, 4) / "model.safetensors").unlink()
    return run

def test_unloadable_checkpoints_named(damaged_run):
    with pytest.raises(SaetrackError) as e:
        open_source(damaged_run)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("step1/ (no config.json)", "step2/ (config.json is not valid JSON)", "step4/ (no weights file", "--skip-bad-checkpoints"):
        assert part in msg, msg

def test_skip_bad_records_skipped(damaged_run, micro, tmp_path):
    src = open_source(damaged_run, skip_bad=True)
    assert src.steps == [0, 8, 16, 24]
    assert [s["checkpoint"] for s in src.skipped] == ["step1", "step2", "step4"]
    d = cache_activations(src, micro.acts.hook, load_tokens(damaged_run, "train"), 310, tmp_path / "acts", steps=[8], progress=False)[8]
    assert read_json(d / "manifest.json")["skipped"] == src.skipped

def test_cli_skip_bad_checkpoints(capsys, damaged_run, tmp_path):
    argv = ["activations", "--preset", "micro", "--run", str(damaged_run), "--at-steps", "8", "--out", str(tmp_path / "a"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step1/ (no config.json)" in err[0]
    assert main(argv + ["--skip-bad-checkpoints"]) == 0
    m = read_json(tmp_path / "a" / "blocks.1.hook_resid_pre" / "train" / "step8" / "manifest.json")
    assert [s["checkpoint"] for s in m["skipped"]] == ["step1", "step2", "step4"]

def test_flipped_weights_detected_then_rebuilt(micro_run, micro, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations", "series"))
    w = step_dir(run, 8) / "model.safetensors"
    good = file_sha256(w)
    assert read_json(step_dir(run, 8) / "sha256.json") == {"model.safetensors": good}
    b = bytearray(w.read_bytes()); b[-5] ^= 0x10; w.write_bytes(bytes(b))
    src = open_source(run)
    assert src.hooked(4) is not None                                            # other steps are fine
    with pytest.raises(CorruptCacheError, match=f"delete {step_dir(run, 8)} and rerun `saetrack lm --out {run}`"):
        src.hooked(8)
    shutil.rmtree(step_dir(run, 8))                                             # the fix the message names
    train_lm(micro.lm, run, progress=False)
    assert file_sha256(w) == good and open_source(run).hooked(8) is not None

def test_unreachable_hub_fails_fast_in_one_line(capsys, monkeypatch, tmp_path):
    "No network and nothing in the HF cache: one line naming local checkpoints, before any download retry."
    import socket, time
    calls = []
    def no_network(*a, **k): calls.append(a); raise OSError("Network is unreachable")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(socket, "create_connection", no_network)
    t = time.time()
    assert main(["track", "--checkpoints", "pythia-14m", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Hub cannot be reached" in err[0] and "--checkpoints DIR" in err[0] and time.time() - t < 20
    assert [c[0] for c in calls] == [("huggingface.co", 443)]       # the Hub was checked once, before any download

def test_info_checks_checkpoint_weights(capsys, micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations", "series"))
    assert main(["info", str(run)]) == 0
    w = step_dir(run, 16) / "model.safetensors"
    b = bytearray(w.read_bytes()); b[-3] ^= 0x01; w.write_bytes(bytes(b))
    capsys.readouterr()
    assert main(["info", str(run)]) == 2
    out, err = capsys.readouterr()
    assert "step16: CORRUPT" in out and err.strip().splitlines() == [
        f"error: checkpoint weights of step 16 fail their recorded sha256; delete it and rerun `saetrack lm --out {run}`"]
