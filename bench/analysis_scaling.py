"""How the per-feature analyses scale: the progress measure (feature space, cosine, and all three similarity
measures; activation space) and decoder drift (cosine to final + drift after formation) for all features, against
d_sae and the number of checkpoints, on synthetic data of the tiny run's shapes: an eval set of 65,532 contexts,
d_in 128, each feature's k = 25 contexts drawn from that eval set (as the top contexts are), 150 reference contexts,
SAEs whose codes have about 32 latents firing per context at every width. The feature-space measure is timed on
today's path (sparse codes, each distinct context encoded once) and, where it is feasible, on the dense path it
replaced (every feature's contexts encoded into all d_sae latents: d_sae^2). All numbers are totals over the
checkpoints of that row."""
from statistics import NormalDist
import numpy as np
import torch
from bench.common import best_of

N_EVAL, L0 = 65532, 32

def _inputs(T, F, d_in=128, k=25, R=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    datapoints = torch.randint(0, N_EVAL, (F, k), generator=g)
    acts = lambda t: torch.randn(N_EVAL, d_in, generator=torch.Generator().manual_seed(seed + 1 + t))
    sets = lambda t: acts(t)[datapoints]           # one checkpoint in memory at a time, as the analysis reads them
    ref = torch.randn(T, R, d_in, generator=g)
    b = -NormalDist().inv_cdf(1 - L0 / F)          # about L0 latents fire on a random context
    saes = [dict(W_enc=torch.randn(d_in, F, generator=g) / d_in ** 0.5, b_enc=torch.full((F,), b), b_dec=torch.zeros(d_in))
            for _ in range(T)]
    W = torch.nn.functional.normalize(torch.randn(T, F, d_in, generator=g), dim=-1)
    return sets, ref, saes, W

def dense_progress(sets, ref, saes, measure="cosine", batch: int = 64) -> np.ndarray:
    "The dense feature-space path the sparse one replaced: each feature's k codes d_sae wide (the reference timing)."
    from saetrack.formation import _mp_block, encode, mean_pairwise
    T = len(ref)
    out = []
    for t in range(T):
        A = sets(t)
        s = np.concatenate([_mp_block(encode(A[i:i + batch], saes[t]), measure).numpy() for i in range(0, len(A), batch)])
        out.append(s - mean_pairwise(encode(ref[t], saes[t]), measure))
    return np.stack(out)

def one(T, F, dense: bool) -> dict:
    from saetrack.drift import cos_to_final, drift_after_formation
    from saetrack.formation import MEASURES, progress_measure
    sets, ref, saes, W = _inputs(T, F)
    steps = list(range(T))
    t_feat = best_of(1, progress_measure, sets, ref, "cosine", saes)
    t_all = best_of(1, progress_measure, sets, ref, MEASURES, saes)
    t_dense = best_of(1, dense_progress, sets, ref, saes) if dense else None
    t_act = best_of(1, progress_measure, sets, ref, "cosine")
    t_drift = best_of(1, lambda: drift_after_formation(W, np.zeros(F, dtype=int), steps, C=cos_to_final(W)))
    return dict(T=T, d_sae=F, progress_feature_s=t_feat, progress_feature_dense_s=t_dense, progress_feature_all_s=t_all,
                progress_activation_s=t_act, drift_s=t_drift)

def run(d_saes=(1024, 4096, 16384), Ts=(9, 17, 33), T_width: int = 3, dense_max: int = 4096) -> list[dict]:
    """Width scaling at `T_width` checkpoints (the dense path only up to `dense_max`: it grows as d_sae^2 and took
    ~165 s at 16k on an idle 2-core machine), then checkpoint scaling at d_sae 1024."""
    return [one(T_width, F, F <= dense_max) for F in d_saes] + [one(T, 1024, False) for T in Ts]

if __name__ == "__main__":
    for r in run(): print(r)
