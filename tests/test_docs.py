"""The documentation in docs/ covers what the package exports, and its code is sound.

These checks read the reStructuredText sources; they need no Sphinx. CI builds the
site itself with ``sphinx-build -W`` (.ci/run), which checks every reference.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

from trio_noleader._cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.rst") if "_" not in path.parts[-2][:1])

#: Public modules whose ``__all__`` must each have a reference entry. A module that
#: does not exist (yet) is skipped.
PUBLIC_MODULES = ["trio_noleader", "trio_noleader.testing", "trio_noleader.abc",
                  "trio_noleader.metrics"]

DIRECTIVE = re.compile(r"^\s*\.\. (?:py:)?(auto)?(\w+)::\s*(\S+)", re.MULTILINE)
ENTRY_KINDS = {"function", "class", "exception", "data", "attribute", "method",
               "decorator", "module"}


def _page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def documented_names() -> set[str]:
    """Every object the docs give an entry, by its full dotted name."""
    names: set[str] = set()
    for page in PAGES:
        module = ""
        for match in DIRECTIVE.finditer(_page_text(page)):
            _, kind, target = match.groups()
            target = target.split("(")[0]
            if kind in ("module", "currentmodule"):
                module = target
                names.add(target)
            elif kind == "automodule":
                names.add(target)
            elif kind in ENTRY_KINDS:
                names.add(target if target.startswith("trio_noleader")
                          else f"{module}.{target}")
    return names


def _public_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            pytest.skip(f"{name} does not exist")
        pytest.skip(f"{name} needs {exc.name}, which is not installed")


def test_the_pages_are_found() -> None:
    names = {str(page.relative_to(DOCS)) for page in PAGES}
    assert {"index.rst", "tutorial.rst", "reference/api.rst", "reference/cli.rst"} <= names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_reference_entry(module_name: str) -> None:
    module = _public_module(module_name)
    documented = documented_names()
    missing = [name for name in module.__all__
               if f"{module_name}.{name}" not in documented]
    assert not missing, (
        f"no reference entry in docs/ for {module_name}.{missing}: add one line per name "
        "(`.. autofunction:: name`, `.. autoclass:: Name`) to docs/reference/")


def test_the_entry_finder_can_fail() -> None:
    documented = documented_names()
    assert "trio_noleader.hold_leadership" in documented
    assert "trio_noleader.testing.simulate" in documented
    assert "trio_noleader.no_such_name" not in documented


def test_every_guide_is_in_the_index() -> None:
    index = _page_text(DOCS / "index.rst")
    listed = set(re.findall(r"^\s+(howto/\w+)\s*$", index, re.MULTILINE))
    guides = {f"howto/{page.stem}" for page in (DOCS / "howto").glob("*.rst")}
    assert guides, "no how-to guides found"
    assert guides <= listed, f"how-to guides missing from the index: {guides - listed}"


def test_every_subcommand_is_in_the_cli_reference() -> None:
    cli = _page_text(DOCS / "reference" / "cli.rst")
    rendered = set(re.findall(r"^\.\. noleader-cli::[ \t]*(\S*)", cli, re.MULTILINE))
    _, subparsers = build_parser()
    assert rendered == {"", *subparsers}


def _included_files() -> list[tuple[Path, Path]]:
    pairs = []
    for page in PAGES:
        for target in re.findall(r"^\s*\.\. literalinclude::\s*(\S+)", _page_text(page),
                                 re.MULTILINE):
            pairs.append((page, (page.parent / target).resolve()))
    return pairs


def test_included_code_comes_from_the_examples_ci_runs() -> None:
    pairs = _included_files()
    assert pairs
    for page, path in pairs:
        assert path.is_file(), f"{page.name}: {path} does not exist"
        # .ci/run runs every examples/*.py, so an included example cannot rot.
        assert path.parent == ROOT / "examples", (page, path)
        assert path.suffix == ".py", (page, path)


def _python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in [*PAGES, ROOT / "README.rst"]:
        lines = _page_text(page).splitlines()
        for number, line in enumerate(lines):
            if not re.match(r"^\s*\.\. code-block:: python3?\s*$", line):
                continue
            indent = len(line) - len(line.lstrip())
            body: list[str] = []
            for following in lines[number + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            text = "\n".join(body)
            code_indent = min(len(body_line) - len(body_line.lstrip())
                              for body_line in body if body_line.strip())
            code = "\n".join(body_line[code_indent:] for body_line in body)
            blocks.append((f"{page.name}:{number + 1}", code if text.strip() else ""))
    return blocks


def test_every_python_snippet_is_valid_python() -> None:
    blocks = _python_blocks()
    assert len(blocks) > 10
    for where, code in blocks:
        assert code.strip(), f"{where}: empty code block"
        try:
            ast.parse(code)
        except SyntaxError as exc:
            pytest.fail(f"{where}: {exc}")


def test_snippets_name_only_what_the_package_has() -> None:
    import trio_noleader
    import trio_noleader.testing

    for where, code in _python_blocks():
        for module, name in re.findall(r"\b(trio_noleader(?:\.testing)?)\.(\w+)", code):
            if name in ("testing", "metrics"):
                continue
            exported = (trio_noleader.testing if module.endswith("testing")
                        else trio_noleader).__all__
            assert name in exported, f"{where}: {module}.{name} is not exported"


def test_the_readme_quick_start_is_unchanged() -> None:
    readme = _page_text(ROOT / "README.rst")
    block = readme.split("Quick start\n-----------\n", 1)[1].split(
        ".. code-block:: console\n\n", 1)[1]
    lines = [line.strip() for line in block.splitlines()[:2]]
    assert lines == [
        "$ python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/noleader demo",
        '$ python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" && '
        ".venv/bin/python -m pytest",
    ]


def _docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    tests: dict[str, doctest.DocTest] = {}
    for module_name in PUBLIC_MODULES[:3]:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, ModuleType) or not callable(obj):
                continue
            for test in finder.find(obj, f"{module_name}.{name}", globs={}):
                if test.examples:
                    tests.setdefault(test.name, test)
    return sorted(tests.values(), key=lambda test: test.name)


def test_docstring_examples_run() -> None:
    # The API reference shows these examples; a wrong one fails here, not only in
    # a reader's terminal.
    tests = _docstring_examples()
    names = {test.name.rsplit(".", 1)[-1] for test in tests}
    assert {"current_leader", "watch_leader", "resign"} <= names
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed (see above)"
