"""Command-line front door: friendlier errors than a raw Hydra failure, and exit codes.

Before Hydra starts a run, the same overrides are composed once through the compose API so a
typo gets "did you mean" and a bad value gets one readable paragraph, with nothing written.
"""

from __future__ import annotations

import sys

from genlab import GenlabError

# Exit codes: 2 = fix your input; 128 + signal number = interrupted (a checkpoint was written).
EXIT_USAGE = 2


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The overrides to precheck, or None when the command is not a plain single run."""
    if any(a.startswith("-") for a in argv):  # -m/--multirun, --cfg, --help, ...: Hydra's job
        return None
    return [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def precheck(argv: list[str], config_name: str) -> None:
    """Compose and validate the config for `argv`; raise GenlabError with a friendly message.

    A multirun (`-m`) is expanded and each job's config checked (genlab.sweep.precheck)."""
    from genlab.sweep.precheck import check_multirun, is_multirun

    if is_multirun(argv):
        check_multirun(argv, config_name)
        return
    overrides = _user_overrides(argv)
    if overrides is None:
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.composition import compose, friendly_message
    from genlab.config import validate

    try:
        cfg = compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = friendly_message(err, overrides, config_name, config_name == "train")
        raise GenlabError(message) from None
    if config_name == "train":
        validate(cfg)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"genlab: error: {message}", file=sys.stderr)
    sys.exit(code)
