"""Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which this project does not require).

Markdown cells are copied verbatim; code cells become ```python blocks with their text output below;
cells marked `#| hide` are skipped; image paths are taken relative to the repository root."""
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

if __name__ == "__main__":
    target = ROOT / "README.md"
    text = render(ROOT / "nbs" / "index.ipynb")
    if not target.exists() or target.read_text() != text:
        tmp = target.with_suffix(".md.tmp"); tmp.write_text(text); tmp.replace(target)
        print("wrote README.md", file=sys.stderr)
