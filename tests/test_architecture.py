"""The package's layout holds (docs/architecture.md): rooms named for the stages of a run, imports that only run
downward (function-local imports included), no import cycle between modules, and no module over 400 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "dpo_recipes"
# Rooms from the bottom up; a module may import its own room and any room on a lower floor, nothing else.
FLOORS = (
    ("errors",),  # the one exception type every module may raise
    ("jsonio", "versions", "shipped", "_moved", "progress"),  # atomic writes, the version window, the shipped
    # recipes/configs/data, progress bars
    ("models", "data"),  # the policy and tokenizer; preference data
    ("train",),  # TRL's DPOTrainer with the hooks, levers and guards
    ("config",),  # a recipe's settings and presets (reads the hardware and the reference cache's folder)
    ("watch",),  # health alarms, held-out answers, W&B, plots
    ("pairs", "check"),  # making pairs; the pre-flight
    ("run",),  # the path every recipe shares
    ("cli",),  # the dpo-recipes command
)
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("dpo_recipes"):
                found.add(target)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_room_has_a_floor():
    assert {room(m) for m in modules()} - {"__init__"} == set(FLOOR)


def test_imports_run_downward_only():
    upward = []
    for module, targets in graph().items():
        if room(module) == "__init__":
            continue
        for target in targets:
            if target == "dpo_recipes" or room(target) == room(module):
                continue
            if FLOOR[room(target)] >= FLOOR[room(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports that run up or sideways between rooms:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], defaultdict(int)  # 0 unseen, 1 on the current path, 2 done

    def visit(module, path):
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target == "dpo_recipes" or target == module.rpartition(".")[0]:
                continue  # a module reading its own package's face is not a cycle of modules
            if state[target] == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif state[target] == 0:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if state[module] == 0:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by what they do: {long}"


def test_the_architecture_page_names_every_room():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [r for r in FLOOR if r != "_moved" and f"{r}/" not in page and f"{r}.py" not in page]
    assert missing == [], f"docs/architecture.md does not describe: {missing}"


def test_old_import_paths_still_work_for_one_release_with_a_warning():
    import importlib
    import sys

    import pytest

    from dpo_recipes._moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(f"dpo_recipes.{old}", None)
        with pytest.warns(FutureWarning, match=rf"dpo_recipes\.{old} moved to dpo_recipes\.{new}"):
            module = importlib.import_module(f"dpo_recipes.{old}")
        assert module is importlib.import_module(f"dpo_recipes.{new}")
    from dpo_recipes.trainer import RecipeDPOTrainer  # the names recipes used keep working
    from dpo_recipes.train.trainer import RecipeDPOTrainer as moved

    assert RecipeDPOTrainer is moved
