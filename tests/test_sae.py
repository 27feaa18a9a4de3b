"""The SAE module: initialisation, the paper loss, training, SAELens round trips, metrics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardTrainingSAE, TopKSAE, TopKTrainingSAE

from saetrack import sae as sd
from saetrack.core import SaetrackError


@pytest.fixture(autouse=True)
def _one_thread():
    """Correctness tests, not throughput: on a shared 2-core box, 2-thread OpenMP regions can
    stall for milliseconds per tiny op when the other core is busy.  One thread keeps every test
    well under 10 s; determinism under the default thread count is tested separately."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def planted(n, d=32, m=24, p=0.125, noise=0.01, seed=0, dict_seed=0):
    """Sparse non-negative combinations of m known unit directions in R^d plus Gaussian noise."""
    D = np.random.default_rng(dict_seed).standard_normal((m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    coef = (rng.random((n, m)) < p) * rng.uniform(0.5, 2.0, (n, m))
    X = coef @ D + noise * rng.standard_normal((n, d))
    return X.astype(np.float32), D.astype(np.float32)


def params(sae):
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def assert_same_params(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def random_biases(sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(sae.b_enc.shape, generator=g))
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=g))


# ------------------------------------------------------------------------------ construction
@pytest.mark.parametrize("arch,k", [("relu", None), ("topk", 5)])
def test_make_sae_init(arch, k):
    state = torch.random.get_rng_state()
    a = sd.make_sae(24, 80, seed=3, arch=arch, k=k)
    assert torch.equal(state, torch.random.get_rng_state()), "global RNG must be untouched"
    b = sd.make_sae(24, 80, seed=3, arch=arch, k=k)
    c = sd.make_sae(24, 80, seed=4, arch=arch, k=k)
    assert isinstance(a, StandardTrainingSAE if arch == "relu" else TopKTrainingSAE)
    assert_same_params(a, b)
    assert not torch.equal(a.W_enc, c.W_enc)
    assert a.W_enc.shape == (24, 80) and a.W_dec.shape == (80, 24)
    assert all(p.dtype == torch.float32 for p in a.parameters())
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(80), rtol=0, atol=1e-6)
    assert torch.count_nonzero(a.b_enc) == 0 and torch.count_nonzero(a.b_dec) == 0
    # independent (not tied) kaiming-uniform encoder: bound = sqrt(6 / fan_in), fan_in = 80
    assert not torch.allclose(a.W_enc, a.W_dec.T)
    assert a.W_enc.abs().max() <= (6 / 80) ** 0.5
    assert a.W_enc.abs().max() > 0.9 * (6 / 80) ** 0.5
    assert a.cfg.apply_b_dec_to_input and a.cfg.normalize_activations == "none"


def test_make_sae_b_dec_init_and_bad_args():
    b = torch.arange(8, dtype=torch.float32)
    sae = sd.make_sae(8, 16, seed=0, b_dec_init=b)
    assert torch.equal(sae.b_dec.detach(), b)
    with pytest.raises(SaetrackError):
        sd.make_sae(8, 16, seed=0, arch="gated")
    with pytest.raises(SaetrackError):
        sd.make_sae(8, 16, seed=0, arch="topk")


def test_forward_is_paper_formula():
    sae = sd.make_sae(16, 48, seed=1)
    random_biases(sae)
    x = torch.randn(64, 16)
    W_enc, b_enc, W_dec, b_dec = (p.detach() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    f_ref = torch.relu((x - b_dec) @ W_enc + b_enc)
    with torch.no_grad():
        f = sae.encode(x)
        assert torch.equal(f, f_ref)
        assert torch.equal(sae.decode(f), f_ref @ W_dec + b_dec)
        assert torch.equal(sae(x), f_ref @ W_dec + b_dec)


# ------------------------------------------------------------------------------ loss / grads
def test_paper_loss_value():
    sae = sd.make_sae(16, 48, seed=1)
    random_biases(sae)
    x = torch.randn(100, 16) * 3 + 1
    loss, mse_loss, l1, f, err = sd.paper_loss(sae, x, None, l1_coefficient=0.25)
    with torch.no_grad():
        f_ref = sae.encode(x)
        x_hat = sae.decode(f_ref)
        denom = (x - x.mean(0)).norm(dim=1, keepdim=True)  # L2 norm, not squared
        mse_ref = ((x_hat - x) ** 2 / denom).mean()
        l1_ref = f_ref.abs().sum(dim=1).mean()
    torch.testing.assert_close(mse_loss, mse_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(l1, l1_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss, mse_ref + 0.25 * l1_ref, rtol=1e-6, atol=0)


def test_relu_step_matches_saelens_autograd():
    sae = sd.make_sae(16, 40, seed=0)
    random_biases(sae)
    x = torch.randn(300, 16) * 2 + 0.5
    inv = 1 / (x - x.mean(0)).norm(dim=1, keepdim=True)
    sae.zero_grad(set_to_none=True)
    ref = sd.paper_loss(sae, x, inv, 1e-2)
    ref[0].backward()
    grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad(set_to_none=True)
    buf = {}
    for _ in range(2):                                   # the second call reuses the buffers
        out = sd.relu_step(sae, x, inv, 1e-2, buf)
    for a, b in zip(out, ref):                           # loss, mse_loss, l1, f, err
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    for p, g in zip(sae.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    assert buf["f"].data_ptr() == out[3].data_ptr()      # f is the reused buffer


def test_remove_parallel_grad():
    sae = sd.make_sae(12, 30, seed=0)
    sae.W_dec.grad = torch.randn(30, 12)
    g0 = sae.W_dec.grad.clone()
    sd.remove_parallel_grad_(sae.W_dec)
    w = sae.W_dec.detach()
    assert (sae.W_dec.grad * w).sum(dim=1).abs().max() < 1e-6
    # only the parallel part was removed
    par = (g0 * w).sum(dim=1, keepdim=True) * w
    torch.testing.assert_close(sae.W_dec.grad + par, g0, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ geometric median
def _objective(m, pts):
    return np.linalg.norm(pts - m, axis=1).sum()


def test_geometric_median_known_answers():
    # 1-D, odd count: geometric median == ordinary median (far from the mean 22.0)
    pts = np.array([[0.0], [1.0], [2.0], [7.0], [100.0]], dtype=np.float32)
    assert abs(sd.geometric_median(pts).item() - 2.0) < 1e-3
    # regular simplex (triangle) + an outlier-free symmetric cloud: median = centre
    tri = np.array([[1, 0], [-0.5, 3**0.5 / 2], [-0.5, -(3**0.5) / 2]], dtype=np.float32) + 5
    torch.testing.assert_close(sd.geometric_median(tri), torch.tensor([5.0, 5.0]), atol=1e-4, rtol=0)
    # robustness: 6 points near 0 and 3 far outliers -> median stays near the cluster
    pts = np.concatenate([np.random.default_rng(0).normal(0, 0.01, (6, 3)), np.full((3, 3), 50.0)])
    assert np.linalg.norm(sd.geometric_median(pts).numpy()) < 0.1
    assert sd.geometric_median(pts).dtype == torch.float32


def test_geometric_median_vs_reference_optimiser():
    scipy_opt = pytest.importorskip("scipy.optimize")
    pts = np.random.default_rng(1).standard_t(2, size=(300, 5))  # heavy tails: mean != median
    m = sd.geometric_median(pts, maxiter=200).numpy().astype(np.float64)
    ref = scipy_opt.minimize(
        _objective, np.median(pts, axis=0), args=(pts,), method="Nelder-Mead",
        options=dict(xatol=1e-9, fatol=1e-12, maxiter=50_000, maxfev=50_000),
    ).x
    assert np.linalg.norm(m - ref) < 1e-3
    assert _objective(m, pts) <= _objective(ref, pts) + 1e-5
    assert _objective(m, pts) < _objective(pts.mean(0), pts) - 1.0


# ------------------------------------------------------------------------------ batching
def test_batch_stream_is_epoch_permutations():
    s = sd.BatchIndexStream(10, 4, seed=0)
    idx = torch.cat([s.next() for _ in range(5)]).tolist()  # 20 rows = exactly 2 epochs
    assert sorted(idx[:8]) == sorted(set(idx[:8]))  # no repeat inside a batch pair of epoch 1
    # each epoch covers every row once (batches may straddle the boundary)
    s = sd.BatchIndexStream(10, 5, seed=0)
    b = [s.next().tolist() for _ in range(4)]
    assert sorted(b[0] + b[1]) == list(range(10)) and sorted(b[2] + b[3]) == list(range(10))
    assert all(x == sorted(x) for x in b)


# ------------------------------------------------------------------------------ training
def _train(sae, X, steps=60, bs=256, seed=0, **kw):
    return sd.train_sae(sae, X, steps * bs, lr=kw.pop("lr", 3e-3), l1_coefficient=kw.pop("l1", 1e-3),
                        batch_size=bs, warmup_steps=kw.pop("warmup", 5), seed=seed, progress=False, **kw)


def test_determinism_and_seed_sensitivity(tmp_path):
    X, _ = planted(3000)
    runs = []
    for _ in range(2):
        sae = sd.make_sae(32, 64, seed=7)
        runs.append((sae, _train(sae, X, steps=40)))
    assert_same_params(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    # np.memmap input gives the very same result
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=X.shape)
    mm[:] = X
    mm.flush()
    sae_mm = sd.make_sae(32, 64, seed=7)
    _train(sae_mm, np.load(tmp_path / "x.npy", mmap_mode="r"), steps=40)
    assert_same_params(runs[0][0], sae_mm)
    # a different data seed changes the result
    other = sd.make_sae(32, 64, seed=7)
    _train(other, X, steps=40, seed=1)
    assert not torch.equal(other.W_enc, runs[0][0].W_enc)


def test_determinism_default_threads():
    torch.set_num_threads(max(2, torch.get_num_threads()))  # fixture restores afterwards
    X, _ = planted(2000)
    a, b = sd.make_sae(32, 64, seed=7), sd.make_sae(32, 64, seed=7)
    _train(a, X, steps=10)
    _train(b, X, steps=10)
    assert_same_params(a, b)


def test_decoder_rows_unit_norm_and_curve():
    X, _ = planted(3000)
    sae = sd.make_sae(32, 64, seed=0)
    w0 = sae.W_dec.detach().clone()
    curve = _train(sae, X, steps=50, lr=1e-2, log_every=10, warmup=20)
    assert not torch.allclose(sae.W_dec, w0)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)
    assert curve["step"] == [0, 10, 20, 30, 40, 49]
    assert curve["tokens"][-1] == 50 * 256
    assert curve["lr"][0] == pytest.approx(1e-2 / 20) and curve["lr"][2] == pytest.approx(1e-2)
    assert curve["loss"][-1] < curve["loss"][0]
    assert set(curve) >= {"tokens", "mse", "mse_loss", "l1", "l0"}


def test_epoch_cycling_more_tokens_than_rows():
    X, _ = planted(500)
    sae = sd.make_sae(32, 64, seed=0)
    curve = _train(sae, X, steps=10, bs=256)  # 2560 tokens from 500 rows
    assert curve["tokens"][-1] == 2560
    assert all(np.isfinite(v) for v in curve["loss"])


def test_planted_directions_recovered():
    X, D = planted(30000, seed=0)
    train, held = X[:25000], X[25000:]
    sae = sd.make_sae(32, 64, seed=0, b_dec_init=sd.geometric_median(train[:2000]))
    _train(sae, train, steps=600, bs=512, lr=1e-2, l1=1e-3, warmup=20)
    m = sd.sae_metrics(sae, held)
    assert m["nmse"] < 0.05, m
    cos = D @ sae.W_dec.detach().numpy().T  # [m planted, d_sae]
    assert (cos.max(axis=1) > 0.9).mean() >= 0.8
    assert m["l0"] < 16, m  # sparse: ~3 true features per token


def test_topk_trains_and_respects_k():
    X, D = planted(20000, seed=0)
    sae = sd.make_sae(32, 64, seed=0, arch="topk", k=4, b_dec_init=sd.geometric_median(X[:2000]))
    curve = _train(sae, X[:15000], steps=300, bs=512, lr=1e-2, l1=0.0)
    m = sd.sae_metrics(sae, X[15000:])
    assert m["l0"] <= 4 + 1e-9 and curve["l0"][-1] <= 4
    assert m["nmse"] < 0.1, m
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)


def test_continue_from_reload_equals_in_memory(tmp_path):
    X, _ = planted(4000)
    X2, _ = planted(4000, seed=5)  # "next checkpoint" activations
    sae = sd.make_sae(32, 64, seed=0, b_dec_init=sd.geometric_median(X))
    _train(sae, X, steps=30)
    sd.save_sae(sae, tmp_path / "sae0")
    reloaded = sd.load_training_sae(tmp_path / "sae0")
    assert type(reloaded) is type(sae)
    assert_same_params(sae, reloaded)
    _train(sae, X2, steps=30, lr=1e-3, warmup=3, seed=42)
    _train(reloaded, X2, steps=30, lr=1e-3, warmup=3, seed=42)
    # equal to float rounding: on some CPUs a reloaded tensor's alignment changes the reduction order of one sum
    for (k, p), q in zip(params(sae).items(), params(reloaded).values()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------ disk format
@pytest.mark.parametrize("arch,k", [("relu", None), ("topk", 6)])
def test_saelens_roundtrip_exact(tmp_path, arch, k):
    X, _ = planted(3000)
    sae = sd.make_sae(32, 64, seed=0, arch=arch, k=k)
    random_biases(sae)
    _train(sae, X, steps=20, l1=1e-3 if arch == "relu" else 0.0)
    out = sd.save_sae(sae, tmp_path / "s", extra_metadata={"checkpoint_step": 512, "model": "m"})
    assert sorted(os.listdir(out)) == ["cfg.json", "sae_weights.safetensors"]
    inf = SAE.load_from_disk(out)
    assert type(inf) is (StandardSAE if arch == "relu" else TopKSAE)
    assert inf.cfg.metadata.checkpoint_step == 512 and inf.cfg.metadata.model == "m"
    assert "checkpoint_step" not in sae.cfg.metadata  # caller's SAE not mutated
    x = torch.from_numpy(X[:500]) * 1.7
    with torch.no_grad():
        assert torch.equal(inf.encode(x), sae.encode(x))
        f = sae.encode(x)
        assert torch.equal(inf.decode(f), sae.decode(f))
        assert torch.equal(inf(x), sae(x))
    tr = sd.load_training_sae(out)
    assert type(tr) is type(sae)
    assert_same_params(tr, sae)
    assert all(p.requires_grad for p in tr.parameters())
    if arch == "relu":
        assert tr.cfg.l1_coefficient == 1e-3 and tr.cfg.decoder_init_norm is None
    else:
        assert tr.cfg.k == 6 and tr.cfg.rescale_acts_by_decoder_norm is False


def test_save_overwrite_and_atomic_failure(tmp_path, monkeypatch):
    a = sd.make_sae(8, 16, seed=0)
    b = sd.make_sae(8, 16, seed=1)
    p = tmp_path / "sae"
    sd.save_sae(a, p)
    sd.save_sae(b, p)  # overwrite
    assert_same_params(sd.load_training_sae(p), b)

    def boom(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "cfg.json").write_text("{partial")
        raise OSError("disk full")

    monkeypatch.setattr(StandardTrainingSAE, "save_inference_model", boom)
    with pytest.raises(OSError):
        sd.save_sae(a, p)
    assert_same_params(sd.load_training_sae(p), b)  # old copy intact
    assert sorted(os.listdir(tmp_path)) == ["sae"]  # no temp dirs left behind


# ------------------------------------------------------------------------------ metrics
def test_sae_metrics_against_numpy():
    X, _ = planted(2500)
    sae = sd.make_sae(32, 64, seed=0)
    random_biases(sae)
    with torch.no_grad():
        sae.b_enc[:5] = -1e6  # these 5 latents can never fire
    m = sd.sae_metrics(sae, X, batch_size=700)  # batches not dividing N
    with torch.no_grad():
        f = sae.encode(torch.from_numpy(X)).double().numpy()
        xh = sae(torch.from_numpy(X)).double().numpy()
    x = X.astype(np.float64)
    bd = sae.b_dec.detach().double().numpy()
    sq = ((xh - x) ** 2).sum()
    tv = ((x - x.mean(0)) ** 2).sum()
    assert m["mse"] == pytest.approx(sq / x.size, rel=1e-6)
    assert m["nmse"] == pytest.approx(sq / tv, rel=1e-6)
    assert m["explained_variance"] == pytest.approx(1 - sq / tv, rel=1e-6)
    assert m["mse_loss"] == pytest.approx(
        (((xh - x) ** 2).sum(1) / np.linalg.norm(x - x.mean(0), axis=1)).sum() / x.size, rel=1e-6)
    assert m["l0"] == pytest.approx((f > 0).sum(1).mean(), rel=1e-9)
    assert m["l1"] == pytest.approx(np.abs(f).sum(1).mean(), rel=1e-6)
    dead = ((f > 0).sum(0) == 0).mean()
    assert dead >= 5 / 64 and m["dead_frac"] == pytest.approx(dead)
    assert m["shrinkage"] == pytest.approx(
        (np.linalg.norm(xh - bd, axis=1) / np.linalg.norm(x - bd, axis=1)).mean(), rel=1e-6)
    assert m["l2_ratio"] == pytest.approx(
        (np.linalg.norm(xh, axis=1) / np.linalg.norm(x, axis=1)).mean(), rel=1e-6)
    assert all(isinstance(v, float) for v in m.values())


def test_sae_metrics_perfect_reconstruction():
    # d_sae = 2 d_in, W_enc = [I, -I], W_dec = [I; -I]: x = ReLU(x) - ReLU(-x) exactly
    d = 8
    sae = sd.make_sae(d, 2 * d, seed=0)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    X = np.random.default_rng(0).standard_normal((400, d)).astype(np.float32)
    m = sd.sae_metrics(sae, X)
    assert m["mse"] == 0.0 and m["nmse"] == 0.0 and m["explained_variance"] == 1.0
    assert m["shrinkage"] == pytest.approx(1.0) and m["dead_frac"] == 0.0
    assert m["l0"] == pytest.approx(d, abs=0.01)
