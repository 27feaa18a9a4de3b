"The SAE-Track series on the micro preset: training, SAELens reloads, resume after SIGKILL, corruption, determinism."
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import torch
from sae_lens import SAE
from saetrack.core import CorruptCacheError, SaetrackError, file_sha256
from saetrack.config import get_preset
from saetrack.pipeline import track
from saetrack.sae import load_training_sae
from saetrack.series import SAESeries
from saetrack.activations import load_activations

@pytest.fixture(scope="module")
def series(micro_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "micro"
    shutil.copytree(micro_run, out)
    p = get_preset("micro")
    return track(p, out, progress=False)[p.acts.hook]

def _shas(path):
    return {p.parent.name: file_sha256(p) for p in sorted(path.glob("step*/sae_weights.safetensors"))}

def test_series_layout_and_metrics(series, micro):
    assert series.steps == [0, 1, 2, 4, 8, 16, 24] and series.hook == micro.acts.hook
    m = series.metrics()
    assert list(m.index) == series.steps
    assert {"mse", "nmse", "explained_variance", "l0", "dead_frac", "shrinkage", "ce_recovered"} <= set(m.columns)
    assert not m.loc[0, "recurrent"] and m.loc[24, "recurrent"]
    assert m.loc[0, "tokens"] <= micro.sae.tokens_first and (m["tokens"].iloc[1:] <= micro.sae.tokens_next).all()
    assert set(m["verdict"]) <= {"plateau", "cap"} and (m.loc[m["verdict"] == "cap", "tokens"].iloc[1:] == micro.sae.tokens_next).all()
    assert (m["tokens"].iloc[1:] < micro.sae.tokens_next).any()        # the adaptive budget stopped some links early
    c = series.curve(8)
    assert c["eval"][0]["tokens"] == 0 and c["eval"][-1]["tokens"] == m.loc[8, "tokens"] and "loss" in c["eval"][-1]
    assert (m["explained_variance"] > 0.3).all() and (m["l0"] > 0).all()
    assert np.isfinite(m[["ce_clean", "ce_sae", "ce_zero"]].values).all()
    assert (m["ce_sae"] - m["ce_clean"]).abs().max() < 0.05           # splicing the SAE in costs little loss
    # the micro model barely uses this layer (zero-ablation moves CE < 0.1 nats), so recovered is mostly NaN by design
    gap = m["ce_zero"] - m["ce_clean"]
    assert (m["ce_recovered"].isna() == (gap <= 0.1)).all()
    W = series.decoders()
    assert W.shape == (7, micro.sae.d_sae, 32)
    torch.testing.assert_close(W.norm(dim=-1), torch.ones(7, micro.sae.d_sae), atol=1e-5, rtol=0)

def test_every_sae_reloads_with_saelens_identically(series):
    ev = load_activations(next((series.path.parent / "activations").rglob("eval/step24"))).acts
    x = torch.from_numpy(np.array(ev[:512]))
    for s in series.steps:
        inf = SAE.load_from_disk(str(series.path / f"step{s}"))
        tr = load_training_sae(series.path / f"step{s}")
        with torch.no_grad():
            assert torch.equal(inf.encode(x), tr.encode(x)) and torch.equal(inf(x), tr(x))
        assert inf.cfg.metadata.hook_name == series.hook and inf.cfg.metadata.checkpoint_step == s

def test_saelens_metadata_round_trip(series, micro):
    "cfg.json says what SAELens needs: ActivationsStore.from_sae rebuilds the very activations the SAE was trained on."
    from datasets import Dataset
    from sae_lens import ActivationsStore
    from saetrack.checkpoints import open_source
    sae = SAE.load_from_disk(str(series.path / "step8"))
    md = sae.cfg.metadata
    assert (md.model_name, md.model_class_name, md.hook_name) == ("micro", "HookedTransformer", micro.acts.hook)
    assert md.context_size == micro.lm.ctx and md.prepend_bos is True and list(md.seqpos_slice) == [1, None]
    assert md.dataset_path.startswith("stdlib") and md.model_from_pretrained_kwargs == {} and md.checkpoint_step == 8
    assert sae.get_name() == f"sae_micro_{micro.acts.hook}_{micro.sae.d_sae}"
    ev = load_activations(series.path.parent / "activations" / micro.acts.hook / "eval" / "step8")
    model = open_source(Path(md.model_path).parent).hooked(8)     # model_path: the HF checkpoint directory of step 8
    rows = np.asarray(ev.tokens[:4])
    store = ActivationsStore.from_sae(model, sae, dataset=Dataset.from_dict({"input_ids": rows.tolist()}), streaming=False,
                                      store_batch_size_prompts=4, train_batch_size_tokens=4 * (micro.lm.ctx - 1), n_batches_in_buffer=2,
                                      total_tokens=4 * (micro.lm.ctx - 1))
    a = store.get_activations(torch.from_numpy(rows).long())           # [rows, ctx - 1, d]: BOS dropped by seqpos_slice
    torch.testing.assert_close(a.reshape(-1, a.shape[-1]), torch.from_numpy(np.array(ev.acts[:a.shape[0] * a.shape[1]])),
                               atol=1e-5, rtol=1e-5)

def test_recurrent_init_carries_identity(series):
    W = series.decoders()
    same = (W[1:] * W[:-1]).sum(-1).median().item()                  # latent i vs latent i, next step
    perm = (W[1:] * W[:-1][:, torch.randperm(W.shape[1], generator=torch.Generator().manual_seed(0))]).sum(-1).median().item()
    assert same > 0.5 and abs(perm) < 0.2

def test_same_seed_same_series_and_rerun_is_noop(series, micro_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(micro_run, out)
    track(get_preset("micro"), out, progress=False)
    assert _shas(out / "series") == _shas(series.path)
    mtime = (series.path / "series.json").stat().st_mtime_ns
    track(get_preset("micro"), series.path.parent, progress=False)
    assert (series.path / "series.json").stat().st_mtime_ns == mtime      # nothing retrained

def test_sigkill_mid_series_then_resume_is_identical(series, micro_run, tmp_path):
    out = tmp_path / "killed"
    shutil.copytree(micro_run, out)
    reference_dir = tmp_path / "reference"
    shutil.copytree(micro_run, reference_dir)
    args = ["--preset", "micro", "--tokens-first", "262144", "--epochs", "33", "--quiet"]
    ref = subprocess.run([sys.executable, "-c", "import sys; from saetrack.cli import main; sys.exit(main())", "track",
                          "--out", str(reference_dir), *args], capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from saetrack.cli import main; sys.exit(main())", "track",
                             "--out", str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    man = out / "series" / "series.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(man.read_text())["entries"]) >= 2: break
        except (OSError, ValueError, KeyError): pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL); proc.wait()
    n_done = len(json.loads(man.read_text())["entries"])
    assert 2 <= n_done < 7, f"kill landed after {n_done} SAEs"
    with pytest.raises(SaetrackError, match="incomplete"):
        SAESeries.load(out / "series")
    from saetrack.cli import main
    assert main(["track", "--out", str(out), *args]) == 0
    assert _shas(out / "series") == _shas(reference_dir / "series")
    assert not list((out / "series").glob(".*.tmp"))

def test_corrupt_sae_file_detected_and_rebuilt(series, micro_run, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(series.path.parent, out)
    f = out / "series" / "step8" / "sae_weights.safetensors"
    good = file_sha256(f)
    with open(f, "r+b") as fh: fh.seek(200); fh.write(b"\x00\x01\x02\x03")
    s = SAESeries.load(out / "series")
    with pytest.raises(CorruptCacheError, match="corrupt"):
        s.sae(8)
    track(get_preset("micro"), out, progress=False)
    assert file_sha256(f) == good
    SAESeries.load(out / "series").sae(8)

def test_backward_direction(micro_run, tmp_path):
    out = tmp_path / "back"
    shutil.copytree(micro_run, out)
    p = get_preset("micro", sae=dict(direction="backward"))
    s = track(p, out, progress=False)[p.acts.hook]
    m = s.metrics()
    assert not m.loc[24, "recurrent"] and m.loc[0, "recurrent"]
    assert s.manifest["steps"][0] == 24

def test_kill_inside_an_sae_resumes_from_its_snapshot(series, tmp_path, monkeypatch):
    "A run killed inside an SAE goes on from that SAE's last snapshot (not from its start) and ends bit-identical."
    import saetrack.sae as sd
    out = tmp_path / "inside"
    shutil.copytree(series.path.parent, out)
    man = json.loads((out / "series" / "series.json").read_text())
    for s in ("16", "24"): del man["entries"][s]; shutil.rmtree(out / "series" / f"step{s}")
    (out / "series" / "series.json").write_text(json.dumps(man))
    real, calls = sd.relu_step, [0]
    def counting(*a):
        calls[0] += 1
        if calls[0] == kill_at: raise KeyboardInterrupt("killed")
        return real(*a)
    monkeypatch.setattr(sd, "relu_step", counting)
    kill_at, every = 30, 8 * 64                      # later SAEs: batch 64, so a snapshot every 8 steps
    with pytest.raises(KeyboardInterrupt):
        track(get_preset("micro"), out, progress=False, snapshot_tokens=every)
    snap = torch.load(out / "series" / "step16.partial.pt", weights_only=False)
    assert snap["step"] == 24 and len(snap["curve"]["step"]) > 0          # the last snapshot before step 30
    calls[0], kill_at = 0, None
    track(get_preset("micro"), out, progress=False, snapshot_tokens=every)
    full = json.loads((series.path / "step16" / "metrics.json").read_text())["tokens"] // 64 \
        + json.loads((series.path / "step24" / "metrics.json").read_text())["tokens"] // 64
    assert calls[0] == full - 24                                           # step 16's SAE went on from its step 24
    assert _shas(out / "series") == _shas(series.path)
    assert not list((out / "series").glob("*.partial.pt"))
