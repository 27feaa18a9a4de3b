"""Blind labelling of the labelled sets `nbs/data/feature_labels_<pool>.csv` (see nbs/20_stages, "Checked against labelled features").

    python tools/label_contexts.py show RUN [--start I] [--count N]   # print the drawn pairs' top contexts
    python tools/label_contexts.py add-rule RUN                      # afterwards: fill the `rule` column

The labels of a pool live in `nbs/data/feature_labels_<pool>.csv`, the pool being the analysis' context pool
(`AnalysisConfig.pool`: "train", the ~1M training tokens, or "eval", the 65k held-out tokens).
`show` draws the (step, feature) pairs with `draw_label_set(**LABEL_DRAW)` and prints, for each, its top-k contexts
under SAE[t] on checkpoint t's activations in that pool (the analysis cache's `values` / `indices`), the activating token
marked [[like this]], a few tokens either side. It reads ONLY values, indices, steps and the token strings: no class,
statistic or threshold of the rule, so the labeller is blind to it. `add-rule` is run once, after every label is
written, and adds the rule's class from the cached analysis as the last column."""
import argparse, json, sys
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT/"nbs"/"data"
sys.path.insert(0, str(ROOT))
from saetrack.semantics import LABEL_DRAW, draw_label_set, printable_token   # noqa: E402

def pool_of(meta: dict) -> str: return meta["config"].get("pool", "eval")    # analyses before version 4 read "eval"

def show(run: Path, start: int, count: int, full: int = 10, before: int = 7, after: int = 3):
    from saetrack.activations import load_activations
    meta = json.loads((run/"analysis"/"analysis.json").read_text())
    strings = meta["strings"]
    z = np.load(run/"analysis"/"analysis.npz")
    steps, values, indices = z["steps"], z["values"], z["indices"]     # nothing else is read from the cache
    assert tuple(int(s) for s in steps) == LABEL_DRAW["steps"] and values.shape[1] == LABEL_DRAW["d_sae"]
    tokens = np.asarray(load_activations(run/"activations"/meta["hook"]/pool_of(meta)/f"step{int(steps[-1])}").tokens)
    L = tokens.shape[1] - 1
    dec = lambda t: printable_token(strings[int(t)]) if 0 <= int(t) < len(strings) else f"<{int(t)}>"
    draw = draw_label_set(**LABEL_DRAW)
    for j in range(start, min(start + count, len(draw))):
        step, f = int(draw.step[j]), int(draw.feature[j])
        t = int(np.flatnonzero(steps == step)[0])
        v, ix = values[t, f], indices[t, f]
        fired = int(((v > 0) & (ix >= 0)).sum())
        print(f"#{j}  step {step}  feature {f}  positive top-{len(v)} slots: {fired}")
        rest = []
        for s, (a, i) in enumerate(zip(v, ix)):
            if not (a > 0 and i >= 0): continue
            r, p = int(i) // L, int(i) % L + 1
            if s < full:
                pre = "".join(dec(x) for x in tokens[r, max(1, p - before):p])
                post = "".join(dec(x) for x in tokens[r, p + 1:p + 1 + after])
                print(f"   {a:6.2f} | {pre[-40:]:>40}[[{dec(tokens[r, p])}]]{post[:20]}")
            else:
                rest.append(f"[{dec(tokens[r, p])}]")
        if rest: print("   more:", " ".join(rest))
        print()

def add_rule(run: Path):
    import pandas as pd
    from saetrack.semantics import CLASS_NAMES
    csv = DATA/f"feature_labels_{pool_of(json.loads((run/'analysis'/'analysis.json').read_text()))}.csv"
    lab = pd.read_csv(csv, keep_default_na=False)
    if "rule" in lab.columns: raise SystemExit(f"{csv} already has a rule column")
    z = np.load(run/"analysis"/"analysis.npz")
    steps, classes = z["steps"], z["classes"]
    t = np.array([int(np.flatnonzero(steps == s)[0]) for s in lab.step])
    lab["rule"] = [CLASS_NAMES[int(c)] for c in classes[t, lab.feature.to_numpy()]]
    lab.to_csv(csv, index=False)
    print(f"wrote the rule column of {len(lab)} rows to {csv}")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["show", "add-rule"])
    ap.add_argument("run", type=Path)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=10**9)
    a = ap.parse_args()
    show(a.run, a.start, a.count) if a.cmd == "show" else add_rule(a.run)
