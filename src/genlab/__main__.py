"""`python -m genlab train|sample|export ...`: the installed commands (genlab.commands) where
their scripts are not on PATH; a sweep's own-process jobs run `python -m genlab train`."""

import sys

from genlab.commands import COMMANDS


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in COMMANDS:
        print(
            f"usage: python -m genlab {{{','.join(COMMANDS)}}} [arguments]: the commands "
            "genlab-train, genlab-sample and genlab-export",
            file=sys.stderr,
        )
        sys.exit(2)
    # The command reads its own arguments from sys.argv, as when started as genlab-<name>.
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    COMMANDS[name]()


if __name__ == "__main__":
    main()
