"""SAE training throughput: saetrack's loop against SAELens' SAETrainer on the same SAE and in-memory data,
and the achieved FLOP/s against this machine's torch matmul peak at the same shapes.

SAETrainer is driven on in-memory data through its `data_provider` iterator (no ActivationsStore or model);
W&B logging off, no activation normalisation. It optimises SAELens' own loss and clips gradients, so this
compares loops doing the same amount of matmul work per step (one forward, one backward, one Adam step)."""
import torch
from sae_lens import SAETrainer
from sae_lens.config import LoggingConfig, SAETrainerConfig
from saetrack.sae import BatchIndexStream, make_sae, train_sae
from bench.common import best_of

def matmul_peak(b: int, d_in: int, d_sae: int, reps: int = 20) -> float:
    "FLOP/s of the encoder-shaped matmul [b, d_in] @ [d_in, d_sae], best of 3."
    x, w = torch.randn(b, d_in), torch.randn(d_in, d_sae)
    def run():
        for _ in range(reps): x @ w
    return 2 * b * d_in * d_sae * reps / best_of(3, run)

def ours(acts, d_sae, n_tokens, batch):
    return best_of(2, lambda: train_sae(make_sae(acts.shape[1], d_sae, seed=0), acts, n_tokens, 4e-4, 8e-5,
                                        batch_size=batch, warmup_steps=10, seed=0, progress=False))

def saelens(acts, d_sae, n_tokens, batch):
    x_all = torch.from_numpy(acts)
    def run():
        sae = make_sae(acts.shape[1], d_sae, seed=0)
        sae.cfg.l1_coefficient = 8e-5
        stream = BatchIndexStream(len(acts), batch, seed=0)
        def provider():
            while True: yield x_all.index_select(0, stream.next())
        cfg = SAETrainerConfig(total_training_samples=n_tokens, train_batch_size_samples=batch, lr=4e-4, lr_end=4e-4,
                               lr_warm_up_steps=10, lr_scheduler_name="constant", device="cpu",
                               logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, save_final_checkpoint=False)
        SAETrainer(cfg=cfg, sae=sae, data_provider=provider()).fit()
    return best_of(2, run)

def run(d_saes=(1024, 4096), d_in: int = 128, batch: int = 4096, steps: int = 100, rows: int = 1 << 19) -> list[dict]:
    import numpy as np
    acts = np.random.default_rng(0).standard_normal((rows, d_in), dtype=np.float32)
    out = []
    for d_sae in d_saes:
        n = steps * batch
        t_ours, t_sl = ours(acts, d_sae, n, batch), saelens(acts, d_sae, n, batch)
        flops = 5 * 2 * batch * d_in * d_sae * steps        # ours: 5 matmuls of B x d_in x d_sae per step
        peak = matmul_peak(batch, d_in, d_sae)
        out.append(dict(d_sae=d_sae, ours_acts_per_s=n / t_ours, saelens_acts_per_s=n / t_sl, ratio=t_sl / t_ours,
                        achieved_gflops=flops / t_ours / 1e9, peak_gflops=peak / 1e9, peak_fraction=flops / t_ours / peak))
    return out

if __name__ == "__main__":
    for r in run(): print(r)
