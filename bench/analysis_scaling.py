"""How the per-feature analyses scale: the progress measure (feature space, cosine; activation space) and
decoder drift (cosine to final + drift after formation) for all features, against d_sae and the number of
checkpoints, on synthetic data of the tiny run's shapes (k = 25 contexts, 150 reference contexts, d_in 128).
All numbers are totals over the checkpoints of that row."""
import numpy as np
import torch
from bench.common import best_of

def _inputs(T, F, d_in=128, k=25, R=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    sets = lambda t: torch.randn(F, k, d_in, generator=torch.Generator().manual_seed(seed + t))   # one checkpoint in memory at a time
    ref = torch.randn(T, R, d_in, generator=g)
    saes = [dict(W_enc=torch.randn(d_in, F, generator=g) / d_in ** 0.5, b_enc=torch.zeros(F) - 0.5, b_dec=torch.zeros(d_in)) for _ in range(T)]
    W = torch.nn.functional.normalize(torch.randn(T, F, d_in, generator=g), dim=-1)
    return sets, ref, saes, W

def one(T, F) -> dict:
    from saetrack.drift import cos_to_final, drift_after_formation
    from saetrack.formation import progress_measure
    sets, ref, saes, W = _inputs(T, F)
    steps = list(range(T))
    t_feat = best_of(1, progress_measure, sets, ref, "cosine", saes)
    t_act = best_of(1, progress_measure, sets, ref, "cosine")
    t_drift = best_of(1, lambda: drift_after_formation(W, np.zeros(F, dtype=int), steps, C=cos_to_final(W)))
    return dict(T=T, d_sae=F, progress_feature_s=t_feat, progress_activation_s=t_act, drift_s=t_drift)

def run(d_saes=(1024, 4096, 16384), Ts=(9, 17, 33), T_width: int = 3) -> list[dict]:
    """Width scaling at `T_width` checkpoints (the feature-space measure encodes every feature's contexts into
    all d_sae latents, so it grows as d_sae^2 per checkpoint; 16k at 17 checkpoints would take ~10 min here),
    then checkpoint scaling at d_sae 1024."""
    return [one(T_width, F) for F in d_saes] + [one(T, 1024) for T in Ts]

if __name__ == "__main__":
    for r in run(): print(r)
