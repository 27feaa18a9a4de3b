"""`python -m bench.determinism [N] [--out DIR]`: N fresh micro runs, each in its own process, compared stage by stage.

Every run starts from nothing (`saetrack track --preset micro`), so each repeats the whole chain: corpus split,
tokenizer, token streams, LM checkpoints, activation caches, SAE series. Each stage's files are hashed; a stage that
differs from the first run's is reported with the earlier stages that did not, which locates where a difference
is born. Runs go one at a time with the default torch thread count (what a user gets); the machine may be busy.
A last run is the control: the same run on other CPU kernels (AVX2's, with MKL's AVX2 branch), which must differ,
so the check is shown able to see a change in float sums (skipped where the runs already use those kernels).
Writes DIR/determinism.json and prints one line per run and a summary; exit 1 if any run differed or the control
did not."""
import argparse, hashlib, json, os, shutil, subprocess, sys, time
from pathlib import Path
from saetrack.core import AVX2_KERNELS as CONTROL   # the control run's kernels

STAGES = {   # stage: files (globs under the run directory) whose bytes must not change between runs
    "tokenizer": ["tokenizer/tokenizer.json"],
    "tokens": ["tokens/*.npy"],
    "lm": ["step*/model.safetensors"],
    "activations": ["activations/*/*/step*/acts.npy"],
    "series": ["series/step*/sae_weights.safetensors"],
}

def stage_hashes(run: Path) -> dict:
    "{stage: {relative path: sha256}}."
    out = {}
    for stage, globs in STAGES.items():
        files = sorted(f for g in globs for f in run.glob(g))
        out[stage] = {f.relative_to(run).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return out

def one_run(work: Path, i, env: dict | None = None) -> tuple[dict, float]:
    run = work/f"run{i}"
    shutil.rmtree(run, ignore_errors=True)
    t = time.time()
    subprocess.run([sys.executable, "-c", "import sys; from saetrack.cli import main; sys.exit(main(sys.argv[1:]))",
                    "track", "--preset", "micro", "--out", str(run), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, PYTHONHASHSEED="random", **(env or {})))
    h = stage_hashes(run)
    shutil.rmtree(run)
    return h, time.time() - t

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=50)
    ap.add_argument("--out", default="runs/determinism")
    a = ap.parse_args(argv)
    work = Path(a.out); work.mkdir(parents=True, exist_ok=True)
    ref, rows = None, []
    for i in range(a.n):
        h, sec = one_run(work, i)
        ref = ref or h
        differ = [s for s in STAGES if h[s] != ref[s]]
        rows.append(dict(run=i, seconds=round(sec, 1), differs=differ,
                         files=sum(len(v) for v in h.values())))
        print(f"run {i:3d}: {sec:5.1f}s, {rows[-1]['files']} files, "
              + ("identical to run 0" if not differ else f"DIFFERS from run 0 in {', '.join(differ)}"), flush=True)
    bad = [r for r in rows if r["differs"]]
    control = None
    if any(os.environ.get(k) != v for k, v in CONTROL.items()):
        h, sec = one_run(work, "-control", CONTROL)
        control = [s for s in STAGES if h[s] != ref[s]]
        print(f"control, AVX2 kernels: {sec:5.1f}s, " + (f"differs in {', '.join(control)}" if control else
              "IDENTICAL: the check did not see a change of kernels"), flush=True)
    summary = dict(runs=a.n, identical=a.n - len(bad), first_differing_stage=[r["differs"][0] for r in bad],
                   reference=ref, rows=rows, threads=os.environ.get("OMP_NUM_THREADS", "default"),
                   control=dict(env=CONTROL, differs=control))
    (work/"determinism.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.n - len(bad)} of {a.n} runs identical to run 0 in every stage "
          f"({sum(len(v) for v in ref.values())} files: " + ", ".join(f"{s} {len(ref[s])}" for s in STAGES) + ")")
    return 1 if bad or control == [] else 0

if __name__ == "__main__":
    sys.exit(main())
