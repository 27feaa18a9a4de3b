"The package's shape: the modules' top-level imports form no circle (imports inside functions are not counted)."
import ast
from pathlib import Path
import saetrack

PKG = Path(saetrack.__file__).parent

def _module_level(body):
    "The statements run at import time: the module body, and what sits in its top-level if / try blocks."
    for node in body:
        yield node
        if isinstance(node, ast.If): yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])

def import_graph() -> dict[str, set[str]]:
    "{module: the saetrack modules it imports at module level}, from the source of saetrack/*.py."
    mods = {p.stem for p in PKG.glob("*.py")}
    graph = {}
    for m in sorted(mods):
        deps = set()
        for node in _module_level(ast.parse((PKG / f"{m}.py").read_text()).body):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base == "saetrack" or base.startswith("saetrack."):
                    base = base.removeprefix("saetrack").lstrip(".") if node.level == 0 else base
                    deps |= {base.split(".")[0]} if base else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("saetrack.")}
        graph[m] = (deps & mods) - {m}
    return graph

def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    "One import circle as [a, b, ..., a], or None."
    state, stack = {}, []
    def visit(m):
        state[m] = "open"; stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open": return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)): return c
        state[m] = "done"; stack.pop()
    for m in sorted(graph):
        if m not in state and (c := visit(m)): return c
    return None

def test_the_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None

def test_module_level_imports_are_acyclic():
    graph = import_graph()
    assert {"figures", "pipeline", "scaling", "analysis", "cli"} <= set(graph)
    assert {"analysis", "matching", "scaling"} <= graph["figures"] and "changepoints" in graph["analysis"]   # `from . import a, b` counted
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))

def test_figures_only_read():
    "The figures module reaches the analysis and the baseline through their cache readers only."
    src = (PKG / "figures.py").read_text()
    assert "cached_analysis" in src and "cached_baseline" in src
    assert not any(f"{name}(" in src for name in ("analyse", "run_baseline", "baseline_study", "train_series", "track"))
