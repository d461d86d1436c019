"""The package's shape (issue 13, docs/architecture.md): every module short enough to read,
and no import cycle among genlab's module-level imports."""

import ast
import re

from fixtures import REPO, assert_no_import_cycle
from module_table import import_targets, package_of

SRC = REPO / "src"
MAX_LINES = 450


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted((SRC / "genlab").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text()))
    return found


def _module_level_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """genlab modules imported at module level (not inside functions: those are lazy), with
    the packages above each (importing genlab.models.ae runs genlab.models first)."""
    package = package_of(name, known)
    targets = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in import_targets(package, node, known):
                while target:
                    targets.add(target)
                    target = target.rpartition(".")[0]
    return {t for t in targets if t in known and t != name}


def test_no_module_is_longer_than_the_limit():
    long = {
        name: n
        for name, (path, _) in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_module_level_imports_have_no_cycle():
    modules = _modules()
    known = set(modules)
    graph = {name: _module_level_imports(name, tree, known) for name, (_, tree) in modules.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    assert_no_import_cycle(graph)


def test_the_architecture_page_lists_every_module_with_its_length():
    import module_table

    text = module_table.DOC.read_text()
    new, problems = module_table.updated(text, module_table.module_lines())
    assert not problems, problems
    stale = [row[:80] for row in module_table.stale_rows(text, new)]
    assert not stale, f"run python tests/module_table.py; stale rows: {stale}"


def test_the_package_and_conf_refer_to_no_document_outside_the_repository():
    """Lab notebooks ("seed 001") and issue numbers are not in the repository: comments and
    user-facing text say the why itself (measured figures live in docs/experiments.md)."""
    pattern = re.compile(r"seed 00[0-9]|issue [0-9]+", re.IGNORECASE)
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for top in ("src/genlab", "conf")
        for path in sorted((REPO / top).rglob("*"))
        if path.suffix in (".py", ".yaml", ".md", ".txt")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)
