"""Activation harvest throughput on the tiny model: saetrack's harvester (stop at the hook's layer,
inference mode, write into a preallocated array) against the peer's best path, SAELens' `ActivationsStore.get_activations`
(its `run_with_cache` with a names filter and `stop_at_layer`), and against a naive full forward with `run_with_cache`
and no names filter. Same token rows, same model, one process, side by side. A second row takes the depths of the
layers study (`saetrack baseline`, document 003): saetrack's one pass feeding every hook against one ActivationsStore
per hook, which is how SAELens harvests several hooks."""
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
    from bench.gpu import saelens_harvest, saelens_store
    store = saelens_store(model, rows, hook, batch_rows, False, "cpu")
    t_ours = best_of(3, harvest, model, rows, {hook: out}, batch_rows)
    ref = out.copy()
    t_store = best_of(3, saelens_harvest, store, rows, batch_rows, "cpu")
    theirs = store.get_activations(torch.from_numpy(rows[:batch_rows]).long())[:, 1:].reshape(-1, out.shape[1]).numpy()
    assert np.allclose(ref[:len(theirs)], theirs, atol=1e-5), "saetrack and ActivationsStore disagree"
    t_naive = best_of(3, naive)
    assert np.allclose(ref, out, atol=1e-5), "the two harvesters disagree"
    from saetrack.checkpoints import check_hook
    layer = check_hook(model, hook)
    @torch.inference_mode()
    def forward_only():     # the blocks below the hook and nothing else: no hook, no copy (where the time goes)
        for i in range(0, len(rows), batch_rows):
            model(torch.from_numpy(rows[i:i+batch_rows]).long(), stop_at_layer=layer)
    t_fwd = best_of(3, forward_only)
    k = several(model, rows, batch_rows)
    n = out.shape[0]
    ceiling = flops_per_token(model.cfg, model.cfg.n_layers, True) / flops_per_token(model.cfg, layer, False)
    return dict(tokens=n, ours_tokens_per_s=n / t_ours, store_tokens_per_s=n / t_store, store_ratio=t_store / t_ours,
                naive_tokens_per_s=n / t_naive, ratio=t_naive / t_ours, flop_ratio=ceiling,
                forward_tokens_per_s=n / t_fwd, forward_share=t_fwd / t_ours, several=k)

LAYERS = ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_post"]

def several(model, rows: np.ndarray, batch_rows: int, hooks=LAYERS) -> dict:
    "The hooks' activations in one pass (saetrack) against one ActivationsStore per hook, side by side; they must agree."
    from bench.gpu import saelens_harvest, saelens_store
    per, d = rows.shape[1] - 1, model.cfg.d_model
    outs = {h: np.empty((len(rows) * per, d), dtype=np.float32) for h in hooks}
    t_ours = best_of(3, harvest, model, rows, outs, batch_rows)
    stores = {h: saelens_store(model, rows, h, batch_rows, False, "cpu") for h in hooks}
    t_store = best_of(3, lambda: [saelens_harvest(s, rows, batch_rows, "cpu") for s in stores.values()])
    first = torch.from_numpy(rows[:batch_rows]).long()
    for h, s in stores.items():
        theirs = s.get_activations(first)[:, 1:].reshape(-1, d).numpy()
        assert np.allclose(outs[h][:len(theirs)], theirs, atol=1e-5), f"saetrack and ActivationsStore disagree at {h}"
    n = len(rows) * per
    return dict(hooks=list(hooks), ours_tokens_per_s=n / t_ours, store_tokens_per_s=n / t_store, ratio=t_store / t_ours)

if __name__ == "__main__":
    print(run())
