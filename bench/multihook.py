"""Harvest cost of k hooks: one forward pass per batch that feeds every hook (what `--hook a,b,...` runs) against k
separate passes, one per hook, each stopping at its own hook. Micro preset (built into `run_dir` if missing, seconds),
same token rows, same model, one process and one thread (on a shared 2-core box two threads spend most of their time
waiting on each other: 14 s for what one thread does in 0.07 s); the two must write identical activations.
`python -m bench.multihook [run_dir]`."""
import sys
from pathlib import Path
import numpy as np
from saetrack.activations import harvest, token_rows
from saetrack.checkpoints import check_hook
from bench.common import best_of, loadavg

HOOKS = {   # the micro model has 2 blocks; hooks spread over both, as a study of several layers would take them
    2: ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
    4: ["blocks.0.hook_attn_out", "blocks.0.hook_resid_post", "blocks.1.hook_attn_out", "blocks.1.hook_resid_post"],
}

def micro_model(run_dir):
    "The last checkpoint of the micro run in `run_dir` (trained first if it is not there) and its train token stream."
    from saetrack.checkpoints import open_source
    from saetrack.config import get_preset
    from saetrack.lm import load_tokens, train_lm
    if not (Path(run_dir)/"run.json").exists(): train_lm(get_preset("micro").lm, run_dir, progress=False)
    src = open_source(run_dir)
    return src.hooked(src.steps[-1]), load_tokens(run_dir, "train")

def run(run_dir: str = "runs/micro", n_tokens: int = 1 << 17, batch_rows: int = 64, repeats: int = 5) -> list[dict]:
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try: return _measure(run_dir, n_tokens, batch_rows, repeats)
    finally: torch.set_num_threads(threads)

def _measure(run_dir, n_tokens, batch_rows, repeats) -> list[dict]:
    model, stream = micro_model(run_dir)
    rows = token_rows(stream, n_tokens, model.cfg.n_ctx)
    n = len(rows) * (rows.shape[1] - 1)
    res = []
    for k, hooks in HOOKS.items():
        shared = {h: np.empty((n, model.cfg.d_model), np.float32) for h in hooks}
        alone = {h: np.empty((n, model.cfg.d_model), np.float32) for h in hooks}
        t_one = best_of(repeats, harvest, model, rows, shared, batch_rows)
        t_k = best_of(repeats, lambda: [harvest(model, rows, {h: alone[h]}, batch_rows) for h in hooks])
        assert all(np.array_equal(shared[h], alone[h]) for h in hooks), "one pass and k passes disagree"
        depth = [check_hook(model, h) + 1 for h in hooks]          # blocks a pass runs for each hook (none is a resid_pre)
        blocks = sum(depth) / max(depth)
        res.append(dict(k=k, hooks=hooks, tokens=n, one_pass_s=t_one, k_passes_s=t_k, speedup=t_k / t_one, block_ratio=blocks,
                        load=loadavg()))
    return res

def markdown(res: list[dict]) -> list[str]:
    "bench/RESULTS.md's section for `run()`'s result."
    r0 = res[0]
    lines = [f"## Several hooks in one pass (micro model, {r0['tokens']:,} tokens, batches of 64 rows, one thread, best of 5)", "",
             "| k | hooks | one pass (s) | k separate passes (s) | speed-up | blocks run, k passes / one pass |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['k']} | {', '.join(r['hooks'])} | {r['one_pass_s']:.3f} | {r['k_passes_s']:.3f} | {r['speedup']:.2f} | "
              f"{r['block_ratio']:.2f} |" for r in res]
    return lines + ["", "One pass per batch runs the model once, through the deepest hook's block; k passes run it once per hook, "
                    "each through its own hook's block. The last column counts those blocks: the speed-up the shared pass can "
                    "expect from the blocks alone (each pass also pays the embedding and a fixed cost per call). Both write "
                    f"identical activations (checked). Load average {res[-1]['load']:.2f} when it ended (2 cores, shared).", ""]

if __name__ == "__main__":
    print("\n".join(markdown(run(*sys.argv[1:]))))
