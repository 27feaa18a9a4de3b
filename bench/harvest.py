"""Activation harvest throughput on the tiny model: saetrack's harvester (stop at the hook's layer,
inference mode, write into a preallocated array) against a naive full forward with `run_with_cache` and no
names filter, taking the hook from the cache. Same token rows, same model, one process."""
import numpy as np
import torch
from saetrack.activations import harvest, token_rows
from bench.common import best_of

def flops_per_token(cfg, n_layers: int, unembed: bool) -> float:
    "Forward FLOPs per token of a TransformerLens GPT-NeoX: QKV/O projections, full ctx x ctx scores and mixing, MLP, unembedding."
    d, ctx = cfg.d_model, cfg.n_ctx
    layer = 8 * d * d + 4 * ctx * d + 4 * d * cfg.d_mlp
    return n_layers * layer + (2 * d * cfg.d_vocab if unembed else 0)

def run(run_dir: str = "runs/tiny", hook: str = "blocks.2.hook_resid_pre", n_tokens: int = 1 << 15, batch_rows: int = 64) -> dict:
    from saetrack.checkpoints import open_source
    from saetrack.lm import load_tokens
    src = open_source(run_dir)
    model = src.hooked(src.steps[-1])
    rows = token_rows(load_tokens(run_dir, "eval"), n_tokens, model.cfg.n_ctx)
    out = np.empty((len(rows) * (rows.shape[1] - 1), model.cfg.d_model), dtype=np.float32)
    def naive():
        for i in range(0, len(rows), batch_rows):
            _, cache = model.run_with_cache(torch.from_numpy(rows[i:i+batch_rows]).long())
            out[i * (rows.shape[1] - 1):(i + len(cache[hook])) * (rows.shape[1] - 1)] = cache[hook][:, 1:].reshape(-1, out.shape[1]).numpy()
    t_ours = best_of(3, harvest, model, rows, {hook: out}, batch_rows)
    ref = out.copy()
    t_naive = best_of(3, naive)
    assert np.allclose(ref, out, atol=1e-5), "the two harvesters disagree"
    n = out.shape[0]
    from saetrack.checkpoints import check_hook
    layer = check_hook(model, hook)
    ceiling = flops_per_token(model.cfg, model.cfg.n_layers, True) / flops_per_token(model.cfg, layer, False)
    return dict(tokens=n, ours_tokens_per_s=n / t_ours, naive_tokens_per_s=n / t_naive, ratio=t_naive / t_ours,
                flop_ratio=ceiling)

if __name__ == "__main__":
    print(run())
