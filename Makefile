# saetrack: the two quick-start targets install what they need first.
PY ?= python3

.PHONY: install reproduce test sync check browser
install:
	$(PY) -m pip install -q -e ".[dev]"

reproduce: install          ## the main job on the embedded default (tiny preset), figures into ./figures
	saetrack reproduce

browser:                    ## headless Chromium for the explorer's browser test (Debian's package); that test skips, saying why, where it cannot be installed
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "make browser: could not install chromium (no apt-get, no root or no package index); the browser test will skip"

test: install browser       ## notebooks (micro preset) then the pytest suite
	nbdev-test --n-workers 2
	$(PY) -m pytest

sync:                       ## after editing notebooks: export the library, clean notebooks, regenerate README
	nbdev-export
	nbdev-clean
	$(PY) tools/readme.py

check: sync                 ## fails if the committed library/notebooks/README are out of sync with nbs/
	git diff --exit-code -- saetrack nbs README.md
	test -z "$$(git status --porcelain -- saetrack nbs README.md)"
