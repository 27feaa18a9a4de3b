"Streamed activations (nbs/07_stream): the order, equality with the cache, a streamed series, resume inside an SAE, errors."
import json, shutil
import numpy as np
import pytest
import torch
from saetrack.activations import load_activations
from saetrack.checkpoints import LocalRun, open_source
from saetrack.cli import main
from saetrack.config import get_preset
from saetrack.core import SaetrackError, file_sha256
from saetrack.pipeline import track
from saetrack.series import SAESeries, train_series
from saetrack.stream import ActivationStream, model_stream

def _planted(per):
    "Activations that say which (row, position) they are."
    def acts_of(idx):
        r = torch.from_numpy(np.asarray(idx)).repeat_interleave(per).float()
        return torch.stack([r, torch.arange(per).repeat(len(idx)).float()], 1)
    return acts_of

def test_order_reads_each_activation_once_per_epoch_and_resumes():
    per, n_rows = 5, 40
    st = ActivationStream(_planted(per), n_rows, per, key="k", step=0, buffer=50)          # blocks of 10 rows = 50
    b = st.batches(12, seed=3)
    epoch = torch.cat([b.next() for _ in range(16)])                                       # 4 blocks x 4 batches (2 skipped each)
    ids = (epoch[:, 0] * per + epoch[:, 1]).long()
    assert len(ids.unique()) == 192
    nxt = b.next()                                                                          # a new epoch, a new row order
    assert not torch.equal(nxt, epoch[:12])
    again = st.batches(12, seed=3)
    assert torch.equal(torch.cat([again.next() for _ in range(16)]), epoch)
    a, c = st.batches(12, seed=3), st.batches(12, seed=3)
    for _ in range(9): a.next()
    c.load_state_dict(a.state_dict())
    assert all(torch.equal(a.next(), c.next()) for _ in range(20))
    assert torch.equal(st.batches(12, seed=3).next(4, 8), epoch[4:8])                       # a torchrun process' share
    assert st[:7].shape == (7, 2) and list(st[:7][:, 0]) == [0] * 5 + [1] * 2              # the head, in row order
    with pytest.raises(SaetrackError, match="stream"): st[3:9]
    with pytest.raises(SaetrackError, match="less than one batch"): st.batches(64, seed=0)

@pytest.fixture(scope="module")
def cache(micro_run, micro_acts, micro):
    return load_activations(micro_acts[24]), open_source(micro_run), micro.acts.hook

def test_model_stream_computes_what_the_cache_holds(cache):
    c, src, hook = cache
    rows = np.asarray(c.tokens)
    st = model_stream(src, 24, rows, hook, buffer=1024)
    assert len(st) == len(c.acts) and st.shape == c.acts.shape
    assert np.abs(st[:len(st)] - np.asarray(c.acts)).max() < 1e-5
    block = st.batches(256, seed=0).next()
    assert any(np.abs(np.asarray(c.acts) - block[0].numpy()).max(1) < 1e-5)                # a batch row is a cached row

def _cache_stream(c, key, step, buffer):
    "The same stream over a cache's activations instead of the model."
    per = c.tokens.shape[1] - 1
    acts = torch.from_numpy(np.array(c.acts)).view(len(c.tokens), per, -1)
    return ActivationStream(lambda idx: acts[torch.from_numpy(idx)].reshape(-1, acts.shape[-1]), len(c.tokens), per, key, step, buffer)

def test_streamed_series_equals_the_cache_backed_one(micro_run, micro_acts, micro, tmp_path):
    "Same rows, seed and order: a series trained from the model's stream equals one trained from the cache's."
    from dataclasses import replace
    from saetrack.activations import cache_activations
    from saetrack.lm import load_tokens
    src, hook, steps = open_source(micro_run), micro.acts.hook, [0, 1, 24]
    cfg = replace(micro.sae, tokens_first=1 << 14, tokens_next=1 << 13)            # a few blocks of 2,077 per SAE
    ev = cache_activations(micro_run, hook, load_tokens(micro_run, "eval"), micro.acts.eval_tokens, tmp_path / "acts",
                           split="eval", steps=steps, progress=False)
    caches = {s: load_activations(micro_acts[s]) for s in steps}
    live = {s: model_stream(src, s, np.asarray(caches[s].tokens), hook, buffer=2048) for s in steps}
    backed = {s: _cache_stream(caches[s], live[s].key, s, 2048) for s in steps}
    a = train_series(cfg, live, ev, tmp_path / "live", hook, progress=False)
    b = train_series(cfg, backed, ev, tmp_path / "backed", hook, progress=False)
    assert float((a.decoders() - b.decoders()).abs().max()) < 1e-5
    assert (a.metrics()["tokens"] == b.metrics()["tokens"]).all()

@pytest.fixture(scope="module")
def streamed(micro_run, tmp_path_factory, micro):
    "A micro run tracked with --stream, from the run's own checkpoints; the number of models each stage loaded."
    import saetrack.checkpoints as ck
    out = tmp_path_factory.mktemp("stream") / "micro"
    shutil.copytree(micro_run, out, ignore=shutil.ignore_patterns("activations"))
    loads, real = [], ck.hooked_from_hf
    ck.hooked_from_hf = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        times = {}
        s = track(micro, out, progress=False, stream=True, times=times)[micro.acts.hook]
    finally: ck.hooked_from_hf = real
    return out, s, len(loads)

def test_track_stream_caches_only_held_out_and_loads_each_checkpoint_once_per_stage(streamed, micro):
    out, s, loads = streamed
    hook = micro.acts.hook
    assert not (out / "activations" / hook / "train").exists() and (out / "activations" / hook / "eval").is_dir()
    assert loads == 2 * len(s.steps)          # the held-out harvest, then the series (the stream and the CE check share it)
    assert s.steps == [0, 1, 2, 4, 8, 16, 24]
    m = s.metrics()
    assert (m["explained_variance"] > 0.9).all() and m.loc[0, "tokens"] == micro.sae.tokens_first

def test_streamed_series_within_tolerance_of_the_cached(streamed, micro_tracked):
    "Fresh tokens and another order: not the same bits, but the same quality (micro's cache is 8,184 activations read 16 times)."
    _, s, _ = streamed
    m, c = s.metrics(), SAESeries.load(micro_tracked / "series").metrics()
    assert (m["nmse"] <= 1.1 * c["nmse"]).all()
    assert ((m["l0"] - c["l0"]).abs() <= 0.25 * c["l0"]).all()

def test_kill_inside_a_streamed_sae_resumes_identically(streamed, micro, tmp_path, monkeypatch):
    import saetrack.sae as sd
    src_out, s, _ = streamed
    out = tmp_path / "r"
    shutil.copytree(src_out, out)
    man = json.loads((out / "series" / "series.json").read_text())
    del man["entries"]["24"]; shutil.rmtree(out / "series" / "step24")
    (out / "series" / "series.json").write_text(json.dumps(man))
    real, calls = sd.relu_step, [0]
    def counting(*a):
        calls[0] += 1
        if calls[0] == 20: raise KeyboardInterrupt("killed")
        return real(*a)
    monkeypatch.setattr(sd, "relu_step", counting)
    with pytest.raises(KeyboardInterrupt):
        track(micro, out, progress=False, stream=True, snapshot_tokens=8 * 64)
    assert (out / "series" / "step24.partial.pt").exists()
    monkeypatch.setattr(sd, "relu_step", real)
    track(micro, out, progress=False, stream=True, snapshot_tokens=8 * 64)
    assert file_sha256(out / "series" / "step24" / "sae_weights.safetensors") == file_sha256(s.path / "step24" / "sae_weights.safetensors")

def test_analysis_of_a_streamed_run_names_the_cache_command(streamed, capsys):
    out, _, _ = streamed
    assert main(["analyse", "--preset", "micro", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "saetrack activations --run" in err and "--stream" in err and len(err.strip().splitlines()) == 1

def test_dry_run_plan_prices_the_streamed_run(capsys):
    from saetrack.config import pythia_plan
    p = pythia_plan("pythia-410m")
    assert p["eval_disk_gib"] + p["sae_disk_gib"] < 25 < p["cache_disk_tib"] * 1024          # no terabyte cache
    assert p["stream_buffer_gib"] == 2.0                                                     # 2 x 2^18 x 1,024 x 4 bytes
    assert main(["reproduce", "--preset", "pythia-410m", "--dry-run"]) == 0
    assert "--stream --corpus" in capsys.readouterr().out

def test_stream_never_replaces_a_cached_series(micro_tracked, streamed, capsys):
    "Switching between cached and streamed activations on an existing series is refused, naming the fix, both ways."
    for out, flag in ((micro_tracked, ["--stream"]), (streamed[0], [])):
        before = (out / "series" / "series.json").read_text()
        assert main(["track", "--preset", "micro", "--out", str(out), "--quiet", *flag]) == 2
        err = capsys.readouterr().err
        assert "use a new --out" in err and len(err.strip().splitlines()) == 1
        assert (out / "series" / "series.json").read_text() == before


def _split_worker(rank, run, hook, rows_file, init, result_dir):
    "One of two gloo processes: the stream's activations of 150 rows, counting the rows this process ran the model on."
    import saetrack.stream as stream_mod
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    ran = []
    real = stream_mod.harvest
    stream_mod.harvest = lambda model, rows, outs, *a, **k: (ran.append(len(rows)), real(model, rows, outs, *a, **k))[1]
    rows = np.load(rows_file)
    st = model_stream(open_source(run), 24, rows, hook)
    acts = st.acts_of(np.arange(150))
    np.save(f"{result_dir}/acts{rank}.npy", acts.numpy()); np.save(f"{result_dir}/ran{rank}.npy", np.array(ran))
    torch.distributed.destroy_process_group()


def test_two_processes_split_a_streamed_block(cache, tmp_path):
    "Under torchrun each process runs the model over its share of a block's rows (whole batches), and every one gets the block."
    c, src, hook = cache
    rows = np.asarray(c.tokens)[:150]
    np.save(tmp_path/"rows.npy", rows)
    torch.multiprocessing.spawn(_split_worker, args=(str(src.path), hook, str(tmp_path/"rows.npy"), f"file://{tmp_path}/init",
                                                     str(tmp_path)), nprocs=2)
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try: whole = model_stream(src, 24, rows, hook).acts_of(np.arange(150)).numpy()
    finally: torch.set_num_threads(threads)
    assert [int(np.load(tmp_path/f"ran{r}.npy").sum()) for r in (0, 1)] == [128, 22]     # 2 batches of 64 rows, then the rest
    for r in (0, 1):
        assert np.array_equal(np.load(tmp_path/f"acts{r}.npy"), whole)                  # the whole block, bit for bit
