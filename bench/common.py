"Timing helpers shared by the benchmarks."
import os, time

def timed(fn, *args, **kw):
    "Run fn once; return (result, wall seconds, cpu/wall ratio). cpu/wall well below the thread count means contention."
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    wall = time.perf_counter() - t
    return out, wall, (time.process_time() - c) / max(wall, 1e-9)

def best_of(n, fn, *args, **kw):
    "Fastest of n runs (wall seconds): the least disturbed measurement on a noisy machine."
    return min(timed(fn, *args, **kw)[1] for _ in range(n))

def loadavg() -> float:
    return os.getloadavg()[0]
