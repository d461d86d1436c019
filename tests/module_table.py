"""The `lines` column of docs/architecture.md's module table, from the code.

    python tests/module_table.py           # rewrites the column in place
    python tests/module_table.py --check   # exit 1 and the stale rows when it is out of date

tests/test_layout.py runs the check, so the table cannot drift from the package; a module
missing from the table, or a row naming no module, is reported too.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(?P<module>[\w.]+)` \| (?P<lines>\d+) \|")


def module_lines() -> dict[str, int]:
    found = {}
    for path in sorted((REPO / "src").rglob("*.py")):
        parts = path.relative_to(REPO / "src").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = len(path.read_text().splitlines())
    return found


def updated(text: str, lines: dict[str, int]) -> tuple[str, list[str]]:
    """The page with every row's count replaced, and the problems that a count cannot fix."""
    seen, out = set(), []
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match["module"] in lines:
            seen.add(match["module"])
            line = f"| `{match['module']}` | {lines[match['module']]} |" + line[match.end() :]
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
