"""Where an SAE training step's time goes: torch.profiler over saetrack's loop (ReLU + L1, d_in 128, batch 4096),
self CPU time of every op grouped into matmuls, elementwise passes over the [batch, d_sae] hidden activations
and everything else, per step; plus minor page faults per step (fresh large tensors cost page faults)."""
import resource
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from saetrack.sae import make_sae, train_sae

MATMUL = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul")
OPTIM = ("Optimizer.step", "aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt")

def _group(name: str) -> str:
    if name in MATMUL: return "matmul"
    if name.startswith(OPTIM): return "Adam"
    if name in ("aten::index_select", "aten::sort", "aten::randperm"): return "batch gather"
    return "elementwise / reduction / other"

def run(d_sae: int = 1024, d_in: int = 128, batch: int = 4096, steps: int = 30) -> dict:
    acts = np.random.default_rng(0).standard_normal((1 << 18, d_in), dtype=np.float32)
    args = dict(n_tokens=steps * batch, lr=4e-4, l1_coefficient=8e-5, batch_size=batch, seed=0, progress=False)
    train_sae(make_sae(d_in, d_sae, seed=0), acts, **args)                      # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_sae(make_sae(d_in, d_sae, seed=0), acts, **args)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    groups: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        if e.key.startswith("Optimizer.step"): continue                         # a wrapper: its ops are counted below
        ms = e.self_cpu_time_total / 1e3 / steps
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + ms
        top.append((ms, e.key, e.count // steps))
    total = sum(groups.values())
    return dict(d_sae=d_sae, ms_per_step=total, groups={k: (v, v / total) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
                top=sorted(top, reverse=True)[:8], faults_per_step=faults)

if __name__ == "__main__":
    r = run()
    print(f"d_sae {r['d_sae']}: {r['ms_per_step']:.1f} ms/step of op time, {r['faults_per_step']:.0f} minor page faults/step")
    for k, (ms, share) in r["groups"].items(): print(f"  {k:34s} {ms:6.1f} ms  {share:5.1%}")
    for ms, k, n in r["top"]: print(f"    {k:30s} {ms:6.2f} ms  x{n}")
