"""The tiny LM's training step (`saetrack.lm.lm_step`: a plain PyTorch loop over Hugging Face's GPT-NeoX) with glibc's
default malloc against `keep_freed_memory`, each in a fresh process (the malloc setting is per process and sticks),
in alternating pairs so that a machine whose speed drifts is shared fairly; the losses of the two must be equal bit
for bit. Then where a step's time goes (torch.profiler, self time of each op, grouped)."""
import json, statistics, subprocess, sys

CHILD = """
import json, resource, sys, time
import numpy as np, torch
from saetrack.config import get_preset
from saetrack.core import keep_freed_memory
from saetrack.lm import batch_at, build_model, lm_optimizer, lm_step
keep, steps, profile = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if keep: keep_freed_memory()
cfg = get_preset("tiny").lm
model = build_model(cfg, cfg.vocab_size); opt = lm_optimizer(model, cfg)
tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, 1 << 20)
step = lambda s: lm_step(model, opt, batch_at(tokens, s, cfg), cfg.lr)
for s in range(5): step(s)                                        # warm-up: the heap grows to its working size
if profile:
    from torch.profiler import profile as prof
    with prof() as p:
        for s in range(5, 5 + steps): step(s)
    print(json.dumps({e.key: e.self_cpu_time_total / 1e3 / steps for e in p.key_averages()})); sys.exit()
f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
losses = [step(s) for s in range(5, 5 + steps)]
wall = time.perf_counter() - t0
print(json.dumps(dict(steps_per_s=steps / wall, faults_per_step=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps,
                      losses=losses, tokens_per_step=cfg.batch_size * cfg.ctx)))
"""

def _child(keep: bool, steps: int, profile: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(int(keep)), str(steps), str(int(profile))],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])

def _group(op: str) -> str:
    if op in ("aten::mm", "aten::addmm", "aten::bmm"): return "matmul"
    if "log_softmax" in op or "nll_loss" in op: return "loss over the vocabulary (log-softmax, NLL)"
    if "scaled_dot_product" in op: return "attention"
    if op in ("aten::fill_", "aten::zero_", "aten::copy_", "aten::cat", "aten::empty"): return "fill / copy / cat"
    if op.startswith("Optimizer") or "_foreach" in op: return "AdamW"
    return "other"

def run(pairs: int = 3, steps: int = 40) -> dict:
    "Median steps/s and page faults per step of each malloc setting over `pairs` alternating pairs, and the profile."
    res = {False: [], True: []}
    for _ in range(pairs):
        for keep in (False, True): res[keep].append(_child(keep, steps))
    losses = {tuple(r["losses"]) for rs in res.values() for r in rs}
    assert len(losses) == 1, "keep_freed_memory changed the LM's losses"
    med = lambda keep, k: statistics.median(r[k] for r in res[keep])
    prof = _child(True, 5, profile=True)
    groups: dict[str, float] = {}
    for op, ms in prof.items():
        if not op.startswith("Optimizer.step"): groups[_group(op)] = groups.get(_group(op), 0.0) + ms   # a wrapper
    total = sum(groups.values())
    return dict(pairs=pairs, steps=steps, tokens_per_step=res[True][0]["tokens_per_step"],
                default_steps_per_s=med(False, "steps_per_s"), kept_steps_per_s=med(True, "steps_per_s"),
                default_faults=med(False, "faults_per_step"), kept_faults=med(True, "faults_per_step"),
                speedup=med(True, "steps_per_s") / med(False, "steps_per_s"),
                groups={k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])})

def markdown(r: dict) -> list[str]:
    tps = r["tokens_per_step"]
    return [f"## LM training (tiny preset, {tps:,} tokens a step; {r['pairs']} alternating pairs of fresh processes, {r['steps']} steps each, median)", "",
            "| malloc | steps/s | tokens/s | minor page faults per step |", "|---|---|---|---|",
            f"| glibc default | {r['default_steps_per_s']:.2f} | {r['default_steps_per_s'] * tps:,.0f} | {r['default_faults']:,.0f} |",
            f"| `keep_freed_memory` (what saetrack runs) | {r['kept_steps_per_s']:.2f} | {r['kept_steps_per_s'] * tps:,.0f} | {r['kept_faults']:,.0f} |", "",
            f"Speed-up {r['speedup']:.2f}x, with bit-identical losses (asserted). The step is `saetrack.lm.lm_step`, a plain PyTorch "
            "loop (forward with labels, backward, gradient clipping, AdamW) over Hugging Face's GPT-NeoX, so the plain loop and "
            "saetrack's are the same code; what the process around it changes is the allocator. Where a step's time goes "
            "(torch.profiler, self time): " + "; ".join(f"{k} {v:.0%}" for k, v in r["groups"].items()) + ".", ""]

if __name__ == "__main__":
    print("\n".join(markdown(run())))
