# saetrack: the two quick-start targets install what they need first.
PY ?= python3

.PHONY: install reproduce test sync check
install:
	$(PY) -m pip install -q -e ".[dev]"

reproduce: install          ## the main job on the embedded default (tiny preset), figures into ./figures
	saetrack reproduce

test: install               ## notebooks (micro preset) then the pytest suite
	nbdev-test --n-workers 2
	$(PY) -m pytest

sync:                       ## after editing notebooks: export the library, clean notebooks, regenerate README
	nbdev-export
	nbdev-clean
	$(PY) tools/readme.py

check: sync                 ## fails if the committed library/notebooks/README are out of sync with nbs/
	git diff --exit-code -- saetrack nbs README.md
	test -z "$$(git status --porcelain -- saetrack nbs README.md)"
