"Series cost: an SAE-Track series against converged from-scratch SAEs at every checkpoint, from the recipe study's data."
import json
from pathlib import Path

def run(run_dir: str = "runs/tiny") -> dict:
    from saetrack.convergence import recipe_summary, series_cost
    from saetrack.series import SAESeries
    s = SAESeries.load(Path(run_dir)/"series")
    study = json.loads((Path(run_dir)/"convergence"/"study.json").read_text())
    c = series_cost(s, study)
    c["summary"] = recipe_summary(study).to_dict(orient="index")
    c["best"], c["cap"], c["studied_steps"] = study["best"], study["max_fraction"], study["steps"]
    return c

if __name__ == "__main__":
    print(run())
