"The browser explorer (saetrack.explorer): every page of the micro run built offline, then read in headless Chromium."
import json, re, shutil
from pathlib import Path
import numpy as np
import pytest
from saetrack.analysis import analyse
from saetrack.cli import main
from saetrack.config import get_preset
from saetrack.analysis import cached_analysis
from saetrack.explorer import (Chromium, build_explorer, context_html, external_refs, find_chromium,
                               token_html)
from saetrack.pipeline import track

NO_CHROMIUM = ("no Chromium on this machine: `make browser` installs Debian's `chromium` (apt-get, as root); "
               "without apt-get the browser test cannot run")


@pytest.fixture(scope="module")
def run(micro_run, tmp_path_factory):
    "The micro run with its series and cached analysis (about 1.5 min on 2 cores)."
    out = tmp_path_factory.mktemp("explorer") / "micro"
    shutil.copytree(micro_run, out, ignore=shutil.ignore_patterns("activations"))
    track(get_preset("micro"), out, progress=False)
    analyse(out, progress=False)
    return out


@pytest.fixture(scope="module")
def site(run):
    return build_explorer(run, progress=False)


def _one_line_error(capsys, argv, match):
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_every_feature_page_offline(run, site):
    r = cached_analysis(run)
    F, steps = len(r["live"]), r["steps"].tolist()
    ex = Path(site["dir"])
    assert ex == run / "explorer" and site["pages"] == F and not site["reused"]
    assert {p.name for p in (ex / "f").iterdir()} == {f"{i}.html" for i in range(F)}
    total = 0
    for p in [ex / "index.html", *(ex / "f").iterdir()]:
        text = p.read_text()
        total += len(text.encode())
        assert external_refs(text) == [], (p, external_refs(text)[:3])
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text) + re.findall(r"url\(([^)]*)\)", text)
        assert not [u for u in urls if re.match(r"\s*(https?:)?//", u)], p
        if p.name != "index.html":
            assert [int(s) for s in re.findall(r'<section class="ck" id="s(\d+)"', text)] == steps, p
    assert total == site["bytes"]
    index = (ex / "index.html").read_text()
    assert all(f'href="f/{i}.html"' in index for i in range(F))
    again = build_explorer(run, force=False, progress=False)            # an unchanged explorer is reused
    assert again["reused"] and again["bytes"] == site["bytes"]


def test_text_from_contexts_is_escaped(run, tmp_path):
    assert token_html('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert token_html("\n\t\x01") == "↵⇥␁"
    line = context_html(np.array([0, 1, -1]), np.array([0.0, 1.0, 0.0]), 1, [token_html("<i>"), token_html("&")])
    assert line == '&lt;i&gt;<b class="h9">&amp;</b>'
    r = cached_analysis(run)
    nasty = "<script>alert('x')</script>&amp;\""
    r["strings"] = [nasty] * len(r["strings"])                           # every token is hostile text
    r["patterns"] = np.array(["<b>p&q</b>"] * len(r["patterns"]))
    s = build_explorer(run, r, dest=tmp_path / "ex", progress=False)
    for p in (tmp_path / "ex").rglob("*.html"):
        text = p.read_text()
        assert "<script>alert" not in text and "<b>p&q" not in text, p
        assert text.count("<script") == (1 if p.name == "index.html" else 0), p
    assert s["pages"] == len(r["live"])


def test_cli_summary_and_errors(capsys, run, site, tmp_path):
    assert main(["explorer", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    r = cached_analysis(run)
    assert len(out) == 2 and f"{len(r['live'])} latent pages" in out[0] and " MB" in out[0] and " s " in out[0]
    assert out[1] == "open " + (run / "explorer" / "index.html").resolve().as_uri()
    assert main(["explore", "3", "--html", "--out", str(run), "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("page: " + (run / "explorer" / "f" / "3.html").resolve().as_uri()) and "up to date" in last
    _one_line_error(capsys, ["explore", "100000", "--html", "--out", run, "--quiet"], "outside the SAE")
    _one_line_error(capsys, ["explorer", "--out", tmp_path / "none", "--quiet"], "saetrack track --out")
    bare = tmp_path / "bare"
    shutil.copytree(run / "series", bare / "series")                      # a series whose analysis never ran
    _one_line_error(capsys, ["explorer", "--out", bare, "--quiet"], f"run `saetrack analyse --out {bare}` first")
    stale = tmp_path / "stale"
    shutil.copytree(run, stale, ignore=shutil.ignore_patterns("explorer"))
    meta = json.loads((stale / "analysis" / "analysis.json").read_text())
    meta["config"]["k"] = 5                                                # another setting: the key no longer matches
    (stale / "analysis" / "analysis.json").write_text(json.dumps(meta))
    _one_line_error(capsys, ["explorer", "--out", stale, "--quiet"], "rerun `saetrack analyse")
    _one_line_error(capsys, ["explorer", "--out", run, "--contexts", "0", "--quiet"], "--contexts must be at least 1")
    assert not (bare / "explorer").exists() and not (stale / "explorer").exists()


@pytest.mark.skipif(find_chromium() is None, reason=NO_CHROMIUM)
def test_in_chromium(run, site, tmp_path):
    r = cached_analysis(run)
    F, steps = len(r["live"]), r["steps"].tolist()
    cos0 = np.round(r["cos_to_final"][0], 4)                                # the index sorts on 4 decimals
    ex = Path(site["dir"])
    with Chromium(width=1280, height=900) as b:
        b.open(ex / "index.html")
        order = lambda: b.js("[...document.querySelectorAll('#lat tbody tr')].map(r => +r.dataset.i)")
        start = order()
        assert start == list(range(F))
        b.click('th[data-k="d"]')                                           # a real mouse click on a column header
        up = order()
        assert up != start and sorted(up) == start and (np.diff(cos0[up]) >= 0).all()
        assert b.js("document.querySelector('th[data-k=\"d\"]').getAttribute('aria-sort')") == "ascending"
        b.click('th[data-k="d"]')
        assert (np.diff(cos0[order()]) <= 0).all()
        b.js("const s = document.getElementById('fc'); s.value = 'token'; s.dispatchEvent(new Event('input'))")
        shown = b.js("[...document.querySelectorAll('#lat tbody tr')].filter(r => !r.hidden).length")
        assert shown == int((r["classes"][-1] == 1).sum())
        assert b.errors == []
        b.screenshot(tmp_path / "index.png")
        i = int(np.flatnonzero(r["live"])[0])
        b.open(ex / "f" / f"{i}.html")
        assert b.js("[...document.querySelectorAll('section.ck')].map(s => s.id)") == [f"s{s}" for s in steps]
        assert b.js("[...document.querySelectorAll('section.ck')].every(s => s.getBoundingClientRect().height > 40)")
        assert b.js("document.querySelectorAll('section.ck svg.hist').length") == len(steps)
        b.click(f'nav.steps a[href="#s{steps[-1]}"]')                      # a link between checkpoints
        assert b.js("location.hash") == f"#s{steps[-1]}"
        assert b.errors == []
        b.js("window.scrollTo(0, 0)")
        shot = b.screenshot(tmp_path / "feature.png")
        b.click("ol li a")                                                  # the nearest neighbour's page opens
        b.wait_for("Page.loadEventFired")
        j = int(b.js("location.pathname.split('/').pop().split('.')[0]"))
        assert j != i and 0 <= j < F and b.errors == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    print(f"screenshots: {tmp_path / 'index.png'}, {shot}")
