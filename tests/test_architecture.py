"""The house's import graph: no package imports back up (no cycle between packages) and no circle of
modules inside one, lazy imports included. A newcomer should be able to read the packages bottom-up."""

import ast
import graphlib
from pathlib import Path

import pytest

import vlrl

ROOT = Path(vlrl.__file__).parent

# Packages that must import nothing else of vlrl: the shared floor everything else stands on.
FLOOR = ("vlrl.io", "vlrl.net")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the vlrl modules it imports (at the top or inside functions), as files exist."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from vlrl.a import b` imports vlrl.a (its __init__ runs) and maybe module vlrl.a.b.
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            targets |= {r for n in names if n.startswith("vlrl.") and (r := resolve(n)) and r != mod}
        graph[mod] = targets
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return module
    return ".".join(parts[:2]) if (ROOT / parts[1]).is_dir() or len(parts) > 2 else module


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_the_walker_sees_the_imports_it_must():
    graph = import_graph()
    assert (
        "vlrl.algos.policy_losses" in graph["vlrl.training.grpo"]
        or "vlrl.algos" in graph["vlrl.training.grpo"]
    )
    assert "vlrl.io.jsonl" in graph["vlrl.training.metrics"] or "vlrl.io" in graph["vlrl.training.metrics"]
    assert cycle_in({"a": {"b"}, "b": {"a"}}) is not None and cycle_in({"a": {"b"}, "b": set()}) is None


def test_no_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for mod, targets in import_graph().items():
        mine = package_of(mod)
        packages.setdefault(mine, set()).update(t for t in map(package_of, targets) if t != mine)
    assert cycle_in(packages) is None, f"packages import each other: {' -> '.join(cycle_in(packages))}"


@pytest.mark.parametrize("package", sorted({package_of(m) for m in import_graph()}))
def test_no_circle_of_modules_inside_a_package(package):
    inside = {
        m: {t for t in ts if package_of(t) == package}
        for m, ts in import_graph().items()
        if package_of(m) == package
    }
    assert cycle_in(inside) is None, (
        f"modules of {package} import each other: {' -> '.join(cycle_in(inside))}"
    )


def test_the_floor_imports_nothing_above_it():
    for mod, targets in import_graph().items():
        if package_of(mod) in FLOOR:
            above = {t for t in targets if package_of(t) != package_of(mod)}
            assert not above, f"{mod} imports {sorted(above)}: {package_of(mod)} must stay at the bottom"
