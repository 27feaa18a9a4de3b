"saetrack benchmarks: `python -m bench` measures side by side and rewrites bench/RESULTS.md (not part of the tests)."
