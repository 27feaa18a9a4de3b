"""Screenshot of the browser explorer for the README (figures/explorer.png): one latent's page, in headless Chromium.

    python tools/explorer_screenshot.py RUN [FEATURE] [--out figures/explorer.png] [--height 1150]

RUN is a run directory with a series and its cached analysis (`saetrack analyse`); its explorer is (re)built first
(`saetrack explorer`). FEATURE defaults to the first live latent whose pattern changes from one class or token to another
(shifting, grouping, emerging), else the first live one. Needs Chromium (`make browser`)."""
import argparse, sys
from pathlib import Path
import numpy as np
from saetrack.analysis import cached_analysis
from saetrack.explorer import Chromium, build_explorer


def pick_feature(r: dict) -> int:
    live = np.asarray(r["live"])
    for wanted in (("shifting", "grouping", "emerging"), None):
        ok = live & (np.isin(r["patterns"], wanted) if wanted else True)
        if ok.any(): return int(np.flatnonzero(ok)[0])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("feature", nargs="?", type=int)
    ap.add_argument("--out", default="figures/explorer.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1150)
    a = ap.parse_args(argv)
    r = cached_analysis(a.run)
    site = build_explorer(a.run, r, progress=False)
    i = pick_feature(r) if a.feature is None else a.feature
    with Chromium(width=a.width, height=a.height) as b:
        b.open(Path(site["dir"]) / "f" / f"{i}.html")
        if b.errors: print("page errors:", *b.errors, sep="\n  ", file=sys.stderr); return 1
        b.screenshot(a.out)
    print(f"{a.out}: latent {i} ({r['patterns'][i]}) of {a.run}, {a.width}x{a.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
