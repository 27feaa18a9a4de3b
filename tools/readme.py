"""Write README.md from nbs/index.ipynb and figures/MANIFEST.json (nbdev-readme needs quarto, which this
project does not require).

Markdown cells are copied verbatim; code cells become ```python blocks with their text output below;
cells marked `#| hide` are skipped; image paths are taken relative to the repository root. The results
gallery at the end lists every PNG of the manifest with the sentence `saetrack figures` recorded for it."""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text())
    out = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        if src.lstrip().startswith("#| hide") or not src.strip(): continue
        if c["cell_type"] == "markdown":
            out.append(src.replace("](../", "]("))
        elif c["cell_type"] == "code":
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
            out.append(f"```python\n{code}\n```")
            text = "".join("".join(o.get("text", "")) for o in c.get("outputs", []) if o.get("output_type") == "stream")
            if text.strip(): out.append(f"```\n{text.rstrip()}\n```")
    return "<!-- generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(out) + "\n"

def gallery(manifest: Path) -> str:
    "A table of every PNG in the manifest: the image, what it shows, the paper figure it reproduces."
    if not manifest.exists(): return ""
    man = json.loads(manifest.read_text())
    names = sorted((k[:-4] for k in man if k.endswith(".png")), key=lambda n: (man[n + ".png"]["order"], n))   # make_figures' order
    commits = sorted({v["commit"] for v in man.values()})
    rows = [f"| ![{n}](figures/{n}.png) | **{n}**: {man[n + '.png']['shows']}. *Paper:* {man[n + '.png']['paper']} |" for n in names]
    return ("\n## Results gallery\n\nEvery figure `saetrack figures` wrote into `figures/` (PNG and PDF), from the cached "
            f"`tiny` run at commit {', '.join(commits)}, in pipeline order.\n\n| figure | what it shows |\n|---|---|\n" + "\n".join(rows) + "\n")

if __name__ == "__main__":
    target = ROOT / "README.md"
    text = render(ROOT / "nbs" / "index.ipynb") + gallery(ROOT / "figures" / "MANIFEST.json")
    if not target.exists() or target.read_text() != text:
        tmp = target.with_suffix(".md.tmp"); tmp.write_text(text); tmp.replace(target)
        print("wrote README.md", file=sys.stderr)
