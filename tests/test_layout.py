"""The package layout: layers import only downwards, no import cycle anywhere (deferred imports
included), the core stays torch-only, and the 0.1 names still import (CHANGELOG.md: "Moved in 0.2")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import infinite_former

PACKAGE = Path(infinite_former.__file__).parent
ROOT = "infinite_former"
CORE = {"basis", "ridge", "continuous", "memory", "attention", "utils", "provenance"}
TOOLS = {
    "stats",
    "plots",
    "introspection",
    "metrics",
}  # numpy / matplotlib helpers of the experiments and benchmarks

# layer -> layers it must never import (directly or through a deferred import)
FORBIDDEN = {
    "core": {"models", "data", "training", "hf", "experiments", "cli", "tools"},
    "tools": {"models", "data", "training", "hf", "experiments", "cli"},
    "models": {"data", "training", "hf", "experiments", "cli"},
    "data": {"models", "training", "hf", "experiments", "cli"},
    "training": {"models", "hf", "experiments", "cli"},
    "hf": {"models", "experiments", "cli"},
    "experiments": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "core" if parts[1] in CORE else "tools" if parts[1] in TOOLS else parts[1]


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> set[str]:
    """Every package module `module` imports anywhere in its source (top level, functions, the root's
    lazy-name table), with the parent packages each import initialises (except its own parents)."""
    tree = ast.parse(MODULES[module].read_text())
    here = module if is_package(module) else module.rsplit(".", 1)[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                sub = f"{source}.{a.name}"
                targets.add(sub if sub in MODULES else source)
        elif (
            module == ROOT and isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY"
        ):
            targets |= {f"{ROOT}.{v.value}" for v in node.value.values}  # type: ignore[union-attr]
    out = set()
    own_parents = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)} | {module}
    for t in targets:
        if t not in MODULES:
            continue
        parts = t.split(".")
        chain = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        out |= {c for c in chain if c in MODULES and c not in own_parents}
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_static_import_graph_covers_every_module():
    assert {"infinite_former.ridge", "infinite_former.cli", "infinite_former.training.trainer"} <= set(
        MODULES
    )
    assert "infinite_former.signal" not in MODULES  # a stdlib name
    assert "infinite_former.data.segments" in GRAPH["infinite_former.training.trainer"]
    assert (
        "infinite_former.training.evaluation" in GRAPH["infinite_former.hf.training"]
    )  # deferred ones count


def test_no_import_cycle():
    """Depth-first search over the import graph; any back edge is a cycle (reported as a path)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_downwards():
    bad = [
        f"{m} imports {n}"
        for m, deps in GRAPH.items()
        for n in deps
        if layer(n) in FORBIDDEN.get(layer(m), set())
    ]
    assert not bad, "\n".join(sorted(bad))


def test_every_module_imports_in_a_fresh_interpreter_and_the_core_stays_torch_only():
    code = (
        "import importlib, sys\n"
        "import infinite_former\n"
        "above = sorted(m for m in sys.modules if m.startswith('infinite_former.') and "
        f"m.split('.')[1] not in {sorted(CORE)!r})\n"
        "assert not above, above\n"
        f"for m in {sorted(MODULES)!r}:\n"
        "    importlib.import_module(m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_old_names_still_import():
    from infinite_former import InfiniteFormerLM, LMState, LTMState, MemoryState, ModelState, Segment, Trainer
    from infinite_former.memory import MemoryState as memory_alias
    from infinite_former.models import InfiniteFormerLM as model_class
    from infinite_former.models import ModelState as models_alias
    from infinite_former.training import Trainer as trainer_class

    assert MemoryState is memory_alias is LTMState
    assert ModelState is models_alias is LMState
    assert InfiniteFormerLM is model_class and Trainer is trainer_class
    assert Segment.__module__ == "infinite_former.data.segments"
