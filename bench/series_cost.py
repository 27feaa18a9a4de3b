"Series cost: an SAE-Track series against from-scratch SAEs at every checkpoint, from the convergence study's data."
import json
from pathlib import Path

def run(series_dir: str = "runs/tiny/series") -> dict:
    from saetrack.convergence import nmse_only_fractions, series_cost
    from saetrack.series import SAESeries
    s = SAESeries.load(series_dir)
    conv = json.loads((Path(series_dir)/"convergence.json").read_text())
    c = series_cost(s, conv)
    c["nmse_only_fractions"] = nmse_only_fractions(conv)
    c["both_fractions"] = [r["fraction"] for r in conv["rows"]]
    c["studied_steps"] = conv["steps"]
    c["cap"] = conv["max_fraction"]
    return c

if __name__ == "__main__":
    print(run())
