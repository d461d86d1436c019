"""How a command ends on a problem the user can fix: one line on stderr and an exit code
(`fail`), also for a stop by Ctrl-C or SIGTERM (`one_line_on_stop`). Below the commands, the
export and the sweep machinery, which all end this way."""

from __future__ import annotations

import contextlib
import sys

# Exit codes: 2 = fix your input; 128 + signal number = interrupted (a checkpoint was written).
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"genlab: error: {message}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def one_line_on_stop(message: str):
    """SIGTERM raised as Ctrl-C inside (so what is being written is cleaned up the same way);
    either ends the command with `message` (its {by} the signal) and exit code 130 / 143."""
    import signal

    def terminated(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except KeyboardInterrupt as stop:
        by, code = ("SIGTERM", 143) if stop.args == ("SIGTERM",) else ("Ctrl-C", 130)
        fail(message.replace("{by}", by), code=code)  # (a path may hold braces)
