"""Throughput: saetrack.sae.train_sae vs SAELens' SAETrainer on the same SAE and data.

    python bench/sae_training.py [--steps 200] [--threads N] [--rows 1000000]

Driving SAETrainer on in-memory data: SAETrainer(cfg=SAETrainerConfig(...), sae=..., data_provider=
iterator) only needs ``data_provider`` to be an ``Iterator[torch.Tensor]`` yielding [batch, d_in]
batches (sae_lens.training.types.DataProvider); no ActivationsStore / model is required.
Logging must be off (LoggingConfig(log_to_wandb=False), the default in SAETrainerConfig) and
normalize_activations="none" so it does not estimate a scaling factor first.  SAETrainer
optimises SAELens' own loss (sum-over-dims MSE + decoder-norm-weighted L1), clips grad norm to
1 and does no decoder renormalisation; compute per step is comparable (one forward + backward +
Adam step), so this measures loop overhead, not loss choice.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sae_lens import SAETrainer
from sae_lens.config import LoggingConfig, SAETrainerConfig

from saetrack.sae import _BatchIndexStream, make_sae, train_sae


def _rate(n_tokens: int, t0: float, c0: float) -> float:
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    # cpu/wall well below the thread count means another process was competing for the cores
    print(f"  {n_tokens / wall:,.0f} act/s  wall {wall:.1f}s  cpu/wall {cpu / wall:.2f}"
          f"  loadavg {os.getloadavg()[0]:.2f}", flush=True)
    return n_tokens / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-sae", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="0 = leave torch default")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")

    rng = np.random.default_rng(0)
    acts = rng.standard_normal((args.rows, args.d_in), dtype=np.float32)
    n_tokens = args.steps * args.batch
    l1, lr = 8e-5, 4e-4

    def run_ours(fast: bool = True) -> float:
        sae = make_sae(args.d_in, args.d_sae, seed=0)
        t, c = time.perf_counter(), time.process_time()
        train_sae(sae, acts, n_tokens, lr, l1, batch_size=args.batch, warmup_steps=10,
                  seed=0, progress=False, fast=fast)
        return _rate(n_tokens, t, c)

    def run_saelens() -> float:
        sae = make_sae(args.d_in, args.d_sae, seed=0)
        sae.cfg.l1_coefficient = l1
        x_all = torch.from_numpy(acts)
        stream = _BatchIndexStream(args.rows, args.batch, seed=0)

        def provider():
            while True:  # same gather cost as train_sae
                yield x_all.index_select(0, stream.next())

        cfg = SAETrainerConfig(
            total_training_samples=n_tokens,
            train_batch_size_samples=args.batch,
            lr=lr,
            lr_end=lr,  # must be set explicitly: only LanguageModelSAERunnerConfig fills it
            lr_warm_up_steps=10,
            lr_scheduler_name="constant",
            device="cpu",
            logger=LoggingConfig(log_to_wandb=False),
            n_checkpoints=0,
            save_final_checkpoint=False,
        )
        trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=provider())
        # SAETrainer.fit() draws a tqdm bar; it is not part of the measured work that matters
        # (updated every 100 steps).
        t, c = time.perf_counter(), time.process_time()
        trainer.fit()
        return _rate(n_tokens, t, c)

    ours, plain, theirs = [], [], []
    for _ in range(args.repeats):  # interleave to share any background-load noise
        print("train_sae (fast):", end="")
        ours.append(run_ours())
        print("train_sae (fast=False, SAELens encode/decode):", end="")
        plain.append(run_ours(fast=False))
        print("SAETrainer:", flush=True)
        theirs.append(run_saelens())
    o, p, s = max(ours), max(plain), max(theirs)
    print(f"d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} steps={args.steps}")
    print(f"train_sae : {o:,.0f} act/s  (runs: {', '.join(f'{v:,.0f}' for v in ours)})")
    print(f"train_sae fast=False: {p:,.0f} act/s  (runs: {', '.join(f'{v:,.0f}' for v in plain)})")
    print(f"SAETrainer: {s:,.0f} act/s  (runs: {', '.join(f'{v:,.0f}' for v in theirs)})")
    print(f"ratio train_sae / SAETrainer = {o / s:.2f}  (fast=False: {p / s:.2f})")


if __name__ == "__main__":
    main()
