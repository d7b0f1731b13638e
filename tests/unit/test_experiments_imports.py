"""The experiments are recipes on a small base, not a web of modules: no import cycle among them
(imports inside functions included), and each module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vlalign.experiments

PACKAGE = "vlalign.experiments"
FOLDER = Path(vlalign.experiments.__file__).parent


def modules() -> list[str]:
    return sorted(f"{PACKAGE}.{p.stem}" for p in FOLDER.glob("*.py") if p.stem != "__init__")


def imported(module: str) -> set[str]:
    """Every ``vlalign.experiments.*`` module that ``module`` imports anywhere in its source."""
    tree = ast.parse((FOLDER / f"{module.rsplit('.', 1)[1]}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from vlalign.experiments import demo`
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    known = set(modules())
    return {n for n in names if n in known and n != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_on_hand_made_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle_among_the_experiments():
    graph = {m: imported(m) for m in modules()}
    assert graph[f"{PACKAGE}.demo"] >= {f"{PACKAGE}.base", f"{PACKAGE}.sft_base"}  # the parser sees real imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_each_experiment_module_imports_alone():
    """In one fresh interpreter, each module is imported with every other experiments module unloaded
    first (torch and the lower layers stay loaded, so this takes seconds, not minutes)."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules()!r}:\n"
        f"    for loaded in [m for m in sys.modules if m.startswith('{PACKAGE}.')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
