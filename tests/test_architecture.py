"""The package's architecture, read from its source: layers, no import cycle, extras kept apart.

Every import counts, function-level ones included (only ``if TYPE_CHECKING:``
blocks are skipped: they never run). A new module must be given a layer here.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import trio_noleader
import trio_noleader.testing

PACKAGE = Path(trio_noleader.__file__).resolve().parent

#: Bottom up. A module may import modules of its own layer or below, never above
#: (STYLE.md: exceptions and types -> backend protocol -> backends -> election core
#: -> public helpers -> CLI).
LAYERS: list[set[str]] = [
    {"_version", "_exceptions", "_types", "_util", "_unwrap", "_urls", "_shard_assign"},
    {"abc"},
    {"_release", "_context", "_reentry", "_hub", "_batch", "_observe"},
    {"_aio", "_memory", "_sqlite_file", "_sqlite", "_nats_base", "_nats_watch", "_nats",
     "_nats_setup", "_postgres_sql", "_postgres_watch", "_postgres", "_postgres_setup",
     "_open"},
    {"_campaign", "_election"},
    {"_helpers", "_sharded", "metrics"},
    {"testing._faults", "testing._fence", "testing._schedule", "testing._trace",
     "testing._strategies", "testing._simulation", "testing._runner", "testing._servers",
     "testing._proxy", "testing._sharded",
     "testing"},
    {"_supervisor", "_cli_common"},
    {"_cli_run", "_cli_demo"},
    {"_cli", "__main__"},
    {""},  # the package's __init__
]

#: Third-party imports allowed only in these modules (the optional extras).
EXTRAS: dict[str, set[str]] = {
    "nats": {"_nats_base", "_nats_watch", "_nats", "_nats_setup"},
    "asyncpg": {"_postgres", "_postgres_setup"},
    "trio_asyncio": {"_aio"},
    "hypothesis": {"testing._strategies"},
    "prometheus_client": {"metrics"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(absolute module name, line)`` of every import in *path* that can run."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                found.append((node.module, node.lineno))
            else:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
                # "from . import abc" imports the submodule abc.
                names = [f"{target}.{a.name}".lstrip(".") for a in node.names]
                found.append(("trio_noleader." + target if target else "trio_noleader",
                              node.lineno))
                found.extend(("trio_noleader." + name, node.lineno) for name in names
                             if (PACKAGE / name.replace(".", "/")).with_suffix(".py").exists()
                             or (PACKAGE / name.replace(".", "/") / "__init__.py").exists())
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges: dict[str, int] = {}
        for target, line in _imports(path):
            edges.setdefault(target, line)
        graph[_module_name(path)] = edges
    return graph


def _internal(target: str) -> str | None:
    if target == "trio_noleader":
        return ""
    if target.startswith("trio_noleader."):
        return target.removeprefix("trio_noleader.")
    return None


GRAPH = _graph()


def test_every_module_has_a_layer() -> None:
    placed = set().union(*LAYERS)
    assert set(GRAPH) - placed == set(), "give the new module a layer in LAYERS"


def test_no_module_imports_from_a_higher_layer() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    wrong = []
    for module, edges in GRAPH.items():
        for target, line in edges.items():
            name = _internal(target)
            if name is None or name == module or name not in layer or module not in layer:
                continue
            # Importing a module first imports its package: that edge is implicit.
            if module.startswith(f"{name}.") or (name == "" and module):
                continue
            if layer[name] > layer[module]:
                wrong.append(f"{module}:{line} imports {name or 'trio_noleader'}")
    assert wrong == []


def test_no_import_cycle() -> None:
    internal = {module: {n for t in edges if (n := _internal(t)) is not None
                         and n != module and not module.startswith(f"{n}.")
                         and not (n == "" and module)}
                for module, edges in GRAPH.items()}
    cycles = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def walk(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(internal.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target):], target]))
            elif target not in state:
                walk(target, [*stack, target])
        state[module] = 2

    for module in sorted(internal):
        if module not in state:
            walk(module, [module])
    assert cycles == []


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_optional_extras_stay_in_their_modules(extra: str) -> None:
    users = {module for module, edges in GRAPH.items()
             if any(t == extra or t.startswith(f"{extra}.") for t in edges)}
    assert users <= EXTRAS[extra]
    assert users, f"nothing imports {extra} any more: update EXTRAS"


def test_the_checker_sees_function_level_imports() -> None:
    # open_backend imports the SQLite and NATS modules inside the function.
    assert "trio_noleader._sqlite" in GRAPH["_open"]
    assert "trio_noleader._nats_setup" in GRAPH["_open"]


def test_a_cycle_would_be_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GRAPH, "_types", {**GRAPH["_types"], "trio_noleader._election": 1})
    with pytest.raises(AssertionError, match="_types"):
        test_no_import_cycle()


@pytest.mark.parametrize("module", [trio_noleader, trio_noleader.testing],
                         ids=["trio_noleader", "trio_noleader.testing"])
def test_public_names_resolve_and_report_the_package(module: object) -> None:
    names: list[str] = module.__all__  # type: ignore[attr-defined]
    assert len(names) == len(set(names))
    checked = 0
    for name in names:
        value = getattr(module, name)  # lazy ones too (the test extra has them all)
        assert name in dir(module)
        if isinstance(value, type | types.FunctionType):
            assert value.__module__ == module.__name__, (  # type: ignore[attr-defined]
                f"{name} reports {value.__module__}")
            checked += 1
    assert checked >= 10


def test_public_classes_have_public_qualnames() -> None:
    assert trio_noleader.Leadership.resign.__qualname__ == "Leadership.resign"
    assert repr(trio_noleader.LeadershipLost) == "<class 'trio_noleader.LeadershipLost'>"
    assert trio_noleader.testing.Trace.__module__ == "trio_noleader.testing"


def test_lazy_names_do_not_import_the_extra_early() -> None:
    # A fresh interpreter: importing trio_noleader must not import nats or asyncpg.
    code = ("import sys, trio_noleader, trio_noleader.testing; "
            "assert 'nats' not in sys.modules and 'trio_asyncio' not in sys.modules "
            "and 'asyncpg' not in sys.modules "
            "and 'hypothesis' not in sys.modules, sorted(sys.modules); "
            "assert 'NatsBackend' in dir(trio_noleader); "
            "assert 'PostgresBackend' in dir(trio_noleader)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_modules_stay_small() -> None:
    sizes = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 650} == {}


def test_every_module_imports() -> None:
    for module in set(GRAPH) - {"__main__"}:  # running that one runs the CLI
        importlib.import_module(f"trio_noleader.{module}" if module else "trio_noleader")
