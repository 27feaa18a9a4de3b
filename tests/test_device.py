"Device plumbing: every tensor of SAE training sits where it was asked to be; devices torch cannot use are refused."
import numpy as np
import pytest
import torch
from dataclasses import replace
from saetrack.core import SaetrackError, resolve_device
from saetrack.sae import load_training_sae, make_sae, sae_metrics, save_sae, train_sae
from saetrack.series import held_out_fn, train_one
from test_cli import _one_line_error
from test_convergence import SMALL, planted

def _devices_of(sae, opt_state) -> set:
    tensors = [*sae.parameters(), *(p.grad for p in sae.parameters() if p.grad is not None)]
    tensors += [v for st in opt_state["state"].values() for v in st.values() if isinstance(v, torch.Tensor) and v.ndim > 0]
    return {t.device for t in tensors}

@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_every_tensor_of_training_is_on_the_device(one_thread, tmp_path, device):
    dev = resolve_device(device)
    x, ev = planted(4096), planted(1024, seed=1)
    cfg = replace(SMALL, tokens_first=256 * 40, tokens_next=256 * 20, carry_adam=True)
    sae, curve, adam = train_one(cfg, x, 0, eval_acts=ev, device=device)
    assert _devices_of(sae, adam) == {dev} and sae.cfg.device == str(dev) and len(curve["eval"]) > 2
    save_sae(sae, tmp_path/"a", adam_state=adam)
    later, _, adam2 = train_one(cfg, x, 1, init_from=tmp_path/"a", eval_acts=ev, device=device)
    assert _devices_of(later, adam2) == {dev}
    # the held-out evaluation and the metrics run where the SAE is, and agree with the CPU's
    cpu = load_training_sae(tmp_path/"a")
    assert held_out_fn(cfg, ev, device=dev)(sae)["nmse"] == pytest.approx(held_out_fn(cfg, ev)(cpu)["nmse"], rel=1e-4)
    assert sae_metrics(sae, ev)["l0"] == pytest.approx(sae_metrics(cpu, ev)["l0"], rel=1e-4)

def test_same_seed_same_initial_sae_on_every_device():
    a = make_sae(16, 32, seed=3)
    b = make_sae(16, 32, seed=3, device="auto")       # a GPU where there is one: weights drawn on the CPU, then moved
    for p, q in zip(a.parameters(), b.parameters()): assert torch.equal(p, q.cpu())

@pytest.mark.parametrize("spec", ["meta", "gpu", "cuda:x", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_unusable_devices_are_refused(spec):
    with pytest.raises(SaetrackError, match="--device"): resolve_device(spec)
    with pytest.raises(SaetrackError, match="--device"): make_sae(8, 16, seed=0, device=spec)

def test_cli_refuses_a_device_before_any_work(capsys, tmp_path):
    _one_line_error(capsys, ["track", "--preset", "micro", "--out", tmp_path / "r", "--device", "meta", "--quiet"], "--device")
    assert not (tmp_path / "r").exists()
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["track", "--preset", "micro", "--out", tmp_path / "r", "--device", "cuda", "--quiet"], "CUDA")
        assert not (tmp_path / "r").exists()

def test_bfloat16_storage_is_refused_not_silently_float16(capsys, micro_run, tmp_path):
    _one_line_error(capsys, ["activations", "--preset", "micro", "--run", micro_run, "--dtype", "bfloat16", "--out", tmp_path / "a",
                             "--quiet"], "bfloat16")
