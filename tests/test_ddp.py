"""`torchrun -m saetrack track`: data-parallel SAE training, here with 2 CPU processes (gloo) on the micro run.
The series equals a 1-process run's to float rounding, and a torchrun killed part-way resumes to the same series."""
import os, shutil, signal, subprocess, sys, time
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from saetrack.cli import main
from saetrack.core import read_json
from saetrack.series import SAESeries

ARGS = ["--preset", "micro", "--at-steps", "0,1,2,4", "--tokens-first", "32768", "--budget", "fixed", "--quiet"]   # 4 SAEs, fixed budgets


def torchrun(out, nproc=2, extra=(), cmd="track", args=ARGS):
    "`torchrun --standalone --nproc-per-node 2 -m saetrack track --out OUT ...` in its own process group."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "saetrack", cmd, "--out", str(out), *args, *extra]
    return subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(p, timeout=300):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def kill_all(p):
    "SIGKILL torchrun and its workers (each in a session of its own), as a crash or a preempted job would end them."
    kids = []
    for stat in os.listdir("/proc"):
        try:
            if stat.isdigit() and int(open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()[1]) == p.pid: kids.append(int(stat))
        except (OSError, ValueError, IndexError): pass
    for pid in (p.pid, *kids):
        try: os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    return kids


def weights(run):
    s = SAESeries.load(run/"series")
    return {st: load_file(str(s.dir(st)/"sae_weights.safetensors")) for st in s.steps}


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[s][k] - b[s][k]).abs().max()) for s in a for k in a[s])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, micro_run):
    "A 1-process series and a 2-process one of the same run (the LM and its activation caches shared by copying)."
    root = tmp_path_factory.mktemp("ddp")
    one, two = root/"one", root/"two"
    shutil.copytree(micro_run, one, ignore=shutil.ignore_patterns("activations", "series"))
    t, threads = time.time(), torch.get_num_threads()
    torch.set_num_threads(1)           # like each torchrun worker (OMP_NUM_THREADS=1): the same float sums per process
    try: assert main(["track", "--out", str(one), *ARGS]) == 0
    finally: torch.set_num_threads(threads)
    t1 = time.time() - t
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("series", "activations"))   # the caches too, dealt out over 2
    t = time.time()
    log = finish(torchrun(two))
    t2 = time.time() - t
    return dict(root=root, one=one, two=two, log=log, seconds=(t1, t2))


def test_two_processes_train_the_series_of_one(runs):
    one, two = runs["one"], runs["two"]
    assert runs["log"].count("SAEs at steps") == 1                                  # rank 0 alone reports
    w1, w2 = weights(one), weights(two)
    d = max_diff(w1, w2)
    print(f"1 process {runs['seconds'][0]:.1f} s (in this process), 2 processes {runs['seconds'][1]:.1f} s "
          f"(torchrun, with start-up); largest weight difference {d:.3g}")
    assert d < 1e-4
    m1, m2 = SAESeries.load(one/"series").metrics(), SAESeries.load(two/"series").metrics()
    assert (m1["tokens"] == m2["tokens"]).all() and (m1["verdict"] == m2["verdict"]).all()   # the same stopping decisions
    assert (m1["nmse"] - m2["nmse"]).abs().max() < 1e-4
    assert (m1["ce_sae"] - m2["ce_sae"]).abs().max() < 1e-4 and m2["ce_sae"].notna().all()   # measured on the second process
    assert not list((two/"series").rglob(".*.tmp"))


def test_killed_torchrun_resumes(runs):
    run = runs["root"]/"killed"
    shutil.copytree(runs["two"], run, ignore=shutil.ignore_patterns("series"))
    p = torchrun(run)
    man = run/"series"/"series.json"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        try:
            if len(read_json(man)["entries"]) >= 1: break          # the first SAE is saved: kill every process
        except (OSError, ValueError, KeyError): pass
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    assert len(kill_all(p)) == 2
    p.communicate()
    time.sleep(0.5)
    assert len(read_json(man)["entries"]) < 4
    finish(torchrun(run))
    w, ref = weights(run), weights(runs["two"])
    print(f"resumed after a kill: largest weight difference to the uninterrupted 2-process run {max_diff(w, ref):.3g}")
    assert all(torch.equal(w[s][k], ref[s][k]) for s in ref for k in ref[s])


def test_only_track_analyse_and_baseline_run_under_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["figures", "--preset", "micro", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only `saetrack track`, `analyse` and `baseline` run as several processes" in err and err.count("\n") == 1


def test_two_processes_harvest_the_caches_of_one(runs):
    "Each process harvests its share of the checkpoints; the caches are those one process writes, bit for bit."
    root = runs["one"]/"activations"/"blocks.1.hook_resid_pre"
    entries = sorted(root.glob("*/step*"))
    assert len(entries) == 8                                      # 4 checkpoints, train and eval
    for e in entries:
        twin = runs["two"]/e.relative_to(runs["one"])
        assert np.array_equal(np.load(e/"acts.npy"), np.load(twin/"acts.npy")), e
        assert read_json(e/"manifest.json")["key"] == read_json(twin/"manifest.json")["key"]


def test_analyse_and_baseline_deal_out_their_work(runs, micro_tracked):
    """`torchrun ... analyse` deals the checkpoints' classes out, `... baseline` the independent SAEs (each trained
    whole by one process): the same classes, and the same SAEs and matching numbers, as one process."""
    one, three = runs["root"]/"a-one", runs["root"]/"a-three"      # the micro run's 7-checkpoint series, twice
    for d in (one, three):
        shutil.copytree(micro_tracked, d, ignore=shutil.ignore_patterns("analysis", "baseline", "convergence", "corpora", "controls", "seeds", "explorer"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.time()
        assert main(["analyse", "--out", str(one), "--quiet"]) == 0 and main(["baseline", "--out", str(one), "--quiet"]) == 0
        t1 = time.time() - t
    finally: torch.set_num_threads(threads)
    t = time.time()
    for cmd in ("analyse", "baseline"): finish(torchrun(three, cmd=cmd, args=["--quiet"]))
    t2 = time.time() - t
    print(f"analyse + baseline: 1 process {t1:.1f} s, 2 processes {t2:.1f} s (torchrun, with start-up)")
    a1, a3 = (np.load(r/"analysis"/"analysis.npz", allow_pickle=False) for r in (one, three))
    for name in ("classes", "top_token", "indices", "values"):
        assert np.array_equal(a1[name], a3[name]), name
    refs = sorted((one/"convergence"/"refs").glob("*/sae_weights.safetensors"))
    assert len(refs) == 21                         # 8 baseline, 2 document 003, 2 layers, 9 factors
    for f in refs:
        w1, w3 = load_file(str(f)), load_file(str(three/f.relative_to(one)))
        assert all(torch.equal(w1[k], w3[k]) for k in w1), f
    for name in ("baseline.json", "factors.json"):
        b1, b3 = (read_json(r/"baseline"/name) for r in (one, three))
        b1.pop("seconds"); b3.pop("seconds")
        assert b1 == b3, name


def test_two_processes_stream_the_series_of_one(runs):
    "--stream under torchrun: each process runs the model over every block and trains on its share of each batch."
    one, two = runs["root"]/"s-one", runs["root"]/"s-two"
    for d in (one, two): shutil.copytree(runs["one"], d, ignore=shutil.ignore_patterns("series", "activations"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main(["track", "--out", str(one), "--stream", *ARGS]) == 0
    finally: torch.set_num_threads(threads)
    finish(torchrun(two, extra=["--stream"]))
    assert not (two/"activations"/"blocks.1.hook_resid_pre"/"train").exists()
    d = max_diff(weights(one), weights(two))
    print(f"streamed: largest weight difference 1 vs 2 processes {d:.3g}")
    assert d < 1e-4


def test_chains_of_several_hooks_are_dealt_out(runs):
    "With as many hooks as processes, each hook's chain is trained whole by one process: the series of one process, bit for bit."
    hooks = ["--hook", "blocks.0.hook_resid_pre,blocks.1.hook_resid_pre"]
    one, two = runs["root"]/"h-one", runs["root"]/"h-two"
    for d in (one, two): shutil.copytree(runs["one"], d, ignore=shutil.ignore_patterns("series", "activations"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: assert main(["track", "--out", str(one), *ARGS, *hooks]) == 0
    finally: torch.set_num_threads(threads)
    finish(torchrun(two, extra=hooks))
    for h in hooks[1].split(","):
        s1, s2 = SAESeries.load(one/"series", hook=h), SAESeries.load(two/"series", hook=h)
        assert s1.steps == s2.steps == [0, 1, 2, 4]
        for st in s1.steps:
            w1, w2 = (load_file(str(s.dir(st)/"sae_weights.safetensors")) for s in (s1, s2))
            assert all(torch.equal(w1[k], w2[k]) for k in w1), (h, st)


def _fail_worker(rank, init, result_dir):
    "One of two gloo processes: process 1 fails in `on_every_rank`; then the processes deal out different lists."
    from saetrack.core import SaetrackError, on_every_rank, share_out
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    said = []
    def fails_on_1():
        if rank == 1: raise OSError("no such checkpoint")
        return "ok"
    try: on_every_rank(fails_on_1)
    except (SaetrackError, OSError) as e: said.append(type(e).__name__ + ": " + str(e))
    try: share_out(lambda xs: {x: x for x in xs}, [1, 2, 3] if rank == 0 else [1, 2])
    except SaetrackError as e: said.append(str(e))
    (result_dir / f"said{rank}.txt").write_text("\n".join(said))
    torch.distributed.destroy_process_group()


def test_a_failure_on_one_process_stops_them_all(tmp_path):
    "No process is left waiting: an error on one is raised on all, and so are different work lists."
    torch.multiprocessing.spawn(_fail_worker, args=(f"file://{tmp_path}/init", tmp_path), nprocs=2, join=True)
    said = [(tmp_path / f"said{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert said[0][0] == "SaetrackError: process 1 failed: OSError: no such checkpoint"
    assert said[1][0] == "OSError: no such checkpoint"
    assert all("dealt out different work lists" in s[1] for s in said)
