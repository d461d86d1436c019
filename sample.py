"""Turn a trained run into pictures: `python sample.py run=outputs/runs/<date>/<run> task=samples`.

A thin Hydra wrapper: options live in conf/sample.yaml, the work in genlab.sample.run. Heavy
imports (torch) happen inside main, so `python sample.py --help` and bad input answer fast.
Exit codes: 0 done, 2 bad input (one line on stderr, nothing written), 130/143 stopped by
Ctrl-C/SIGTERM (one line; a file being written is removed, those written before stay).
"""

import re
import signal
import sys

import hydra
from omegaconf import DictConfig

from genlab import GenlabError
from genlab.cli import fail, precheck

# Options whose values are paths. Lightning names checkpoints epoch=004-step=2110.ckpt, and an
# unquoted '=' inside a value is a Hydra syntax error, so such values get quoted here.
PATH_OPTIONS = ("run", "out_dir", "data_dir", "anomaly_data_dir")


def quote_paths(argv: list[str]) -> list[str]:
    """`run=a/epoch=1.ckpt` -> `run='a/epoch=1.ckpt'`; anything already quoted, or holding a
    quote, a `$` (Hydra interpolation) or a trailing backslash (it would escape the closing
    quote), is left for Hydra to read as written."""
    quoted = []
    for arg in argv:
        match = re.fullmatch(r"([+~]*)(\w+)=(.*)", arg, flags=re.DOTALL)
        if match and match.group(2) in PATH_OPTIONS:
            value = match.group(3)
            if "=" in value and not re.search(r"['\"$]|\\$", value):
                arg = f"{match.group(1)}{match.group(2)}='{value}'"
        quoted.append(arg)
    return quoted


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from genlab.sample import run

    def terminated(signum, frame):  # SIGTERM as Ctrl-C: the file being written is removed
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    try:
        written = run(cfg)
    except GenlabError as err:
        fail(str(err))
    except KeyboardInterrupt as stop:
        by, code = ("SIGTERM", 143) if stop.args == ("SIGTERM",) else ("Ctrl-C", 130)
        fail(f"sample.py stopped by {by}; the file it was writing was removed.", code=code)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.argv[1:] = quote_paths(sys.argv[1:])
    try:
        precheck(sys.argv[1:], "sample")
    except GenlabError as err:
        fail(str(err))
    main()
