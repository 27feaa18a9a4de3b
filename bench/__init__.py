"saetrack benchmarks: `python -m bench` measures side by side and rewrites bench/RESULTS.md (not part of the tests)."

from saetrack.core import keep_freed_memory

keep_freed_memory()   # as the CLI does, for every contestant alike: freed blocks are reused, not faulted in afresh
