"""The `lines` and `imports` columns of docs/architecture.md's module table, from the code.

    python tests/module_table.py           # rewrites the columns in place
    python tests/module_table.py --check   # exit 1 and the stale rows when they are out of date

"imports": the genlab modules a module imports at module level, then those it imports only
inside a function, marked (lazy); its own submodules left out; "-" for none.

tests/test_layout.py runs the check, so the table cannot drift from the package; a module
missing from the table, or a row naming no module, is reported too.

`sources`, `package_of` and `import_targets` are the one reading of genlab's imports: this
table, tests/test_layers.py (floors, the whole graph's cycles) and tests/test_layout.py (the
module-level graph) all use them.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(?P<module>[\w.]+)` \| (?P<lines>\d+) \|")
PLUGINS = "hydra_plugins"


def sources() -> dict[str, Path]:
    """Every module of genlab and of genlab's Hydra plugins: dotted name -> file."""
    paths = [*(REPO / "src" / "genlab").rglob("*.py"), *(REPO / "src" / PLUGINS).rglob("*.py")]
    found = {}
    for path in sorted(paths):
        parts = path.relative_to(REPO / "src").with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def package_of(name: str, known: set[str]) -> str:
    """Where a relative import in module `name` starts from: itself for a package (a module
    with submodules), else its parent."""
    return name if any(k.startswith(name + ".") for k in known) else name.rpartition(".")[0]


def owner(target: str, known: set[str]) -> str | None:
    """The module of `known` that `target` (a module, or a name in one) belongs to."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_targets(package: str, node: ast.AST, known: set[str]) -> list[str]:
    """The modules of `known` one import statement imports (`package`: where a relative import
    starts from, `package_of`); `from genlab.models import ae` imports genlab.models.ae, a
    name that is no module is its module's."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        module = node.module or ""
        if node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([module] if module else []))
        names = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                 for a in node.names]  # fmt: skip
    return [found for target in names if (found := owner(target, known))]


def module_imports() -> dict[str, str]:
    """Each module's imports cell: module-level imports, then the lazy ones (only inside a
    function), each group in order of name."""
    found = sources()
    known = set(found)
    cells = {}
    for name, path in found.items():
        package = package_of(name, known)
        tree = ast.parse(path.read_text())
        anywhere, top = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                anywhere.update(import_targets(package, node, known))

        def visit(node: ast.AST, top=top, package=package) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    top.update(import_targets(package, child, known))
                visit(child)

        visit(tree)
        own = {m for m in anywhere if m == name or m.startswith(name + ".")}
        cell = [_short(m) for m in sorted(top - own)]
        cell += [f"{_short(m)} (lazy)" for m in sorted(anywhere - top - own)]
        cells[name] = ", ".join(cell) or "-"
    return cells


def _short(module: str) -> str:
    return module if module in ("genlab",) or module.startswith(PLUGINS) else module[7:]


def module_lines() -> dict[str, int]:
    found = {}
    for path in sorted((REPO / "src").rglob("*.py")):
        parts = path.relative_to(REPO / "src").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = len(path.read_text().splitlines())
    return found


def updated(
    text: str, lines: dict[str, int], imports: dict[str, str] | None = None
) -> tuple[str, list[str]]:
    """The page with every row's count (and imports cell) replaced, and the problems that the
    code cannot fix."""
    imports = module_imports() if imports is None else imports
    seen, out = set(), []
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match["module"] in lines:
            seen.add(match["module"])
            rest = line[match.end() :]
            if match["module"] in imports and rest.count(" | ") >= 1:
                owns = rest.rsplit(" | ", 1)[0]
                rest = f"{owns} | {imports[match['module']]} |"
            line = f"| `{match['module']}` | {lines[match['module']]} |" + rest
        elif match:
            out.append(line)
            seen.add(match["module"])
            continue
        out.append(line)
    problems = [f"no row for module {m}" for m in sorted(set(lines) - seen)]
    problems += [f"a row for {m}, which is no module" for m in sorted(seen - set(lines))]
    return "\n".join(out) + ("\n" if text.endswith("\n") else ""), problems


def stale_rows(text: str, new: str) -> list[str]:
    """The rows whose count changed (`updated` keeps one line for each line)."""
    return [a for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    new, problems = updated(text, module_lines())
    if "--check" in argv:
        stale = stale_rows(text, new)
        for line in stale:
            print("stale:", line[:100])
        for problem in problems:
            print(problem)
        return 1 if stale or problems else 0
    DOC.write_text(new)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
