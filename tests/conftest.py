"Shared fixtures: one micro run per test session (seconds), reused read-only by most tests."
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import pytest
import torch
from saetrack.config import get_preset
from saetrack.lm import train_lm, load_tokens
from saetrack.activations import cache_activations
from saetrack.core import keep_freed_memory

keep_freed_memory()   # as the CLI does: the same bits, without a page fault per 4 KiB of every large tensor

# torch's intra-op thread count changes float sums, and a library can change it behind a test's back (threadpoolctl,
# under UMAP, restores OpenMP's count to what it read): every test and every shared fixture runs at the session's count,
# so "same seed, same weights" compares like with like.
THREADS = torch.get_num_threads()

@pytest.fixture(autouse=True)
def _session_threads():
    torch.set_num_threads(THREADS)
    yield

@pytest.fixture(scope="session")
def micro():
    return get_preset("micro")

@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, micro):
    run = tmp_path_factory.mktemp("runs") / "micro"
    torch.set_num_threads(THREADS)
    train_lm(micro.lm, run, progress=False)
    return run

@pytest.fixture(scope="session")
def micro_acts(micro_run, micro):
    torch.set_num_threads(THREADS)
    return cache_activations(micro_run, micro.acts.hook, load_tokens(micro_run, "train"), micro.acts.train_tokens,
                             micro_run / "activations", progress=False)

@pytest.fixture
def one_thread():
    "Unit tests of numerical kernels run single-threaded: fast on a shared 2-core box and bit-reproducible."
    import matplotlib.pyplot as plt
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    plt.close("all")

@pytest.fixture(scope="session")
def micro_tracked(tmp_path_factory, micro_run):
    "A micro run with its series (all 7 checkpoints) and its cached analysis; copy it before damaging anything."
    import shutil
    from saetrack.cli import main
    run = tmp_path_factory.mktemp("tracked") / "micro"
    torch.set_num_threads(THREADS)
    shutil.copytree(micro_run, run, ignore=shutil.ignore_patterns("activations"))
    assert main(["track", "--preset", "micro", "--out", str(run), "--quiet"]) == 0
    assert main(["analyse", "--preset", "micro", "--out", str(run), "--quiet"]) == 0
    return run
