"""`torchrun -m saetrack track`: data-parallel SAE training, here with 2 CPU processes (gloo) on the micro run.
The series equals a 1-process run's to float rounding, and a torchrun killed part-way resumes to the same series."""
import os, shutil, signal, subprocess, sys, time
import pytest
import torch
from safetensors.torch import load_file
from saetrack.cli import main
from saetrack.core import read_json
from saetrack.series import SAESeries

ARGS = ["--preset", "micro", "--at-steps", "0,1,2,4", "--tokens-first", "32768", "--budget", "fixed", "--quiet"]   # 4 SAEs, fixed budgets


def torchrun(out, nproc=2, extra=()):
    "`torchrun --standalone --nproc-per-node 2 -m saetrack track --out OUT ...` in its own process group."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "saetrack", "track", "--out", str(out), *ARGS, *extra]
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
    shutil.copytree(one, two, ignore=shutil.ignore_patterns("series"))
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


def test_only_track_runs_under_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["analyse", "--preset", "micro", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "only `saetrack track` runs as several processes" in err and err.count("\n") == 1


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
