"""Command-line front door: friendlier errors than a raw Hydra failure, and exit codes.

Before Hydra starts a run, the same overrides are composed once through the compose API so a
typo gets "did you mean" and a bad value gets one readable paragraph, with nothing written.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

from genlab import GenlabError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Exit codes: 2 = fix your input; 128 + signal number = interrupted (a checkpoint was written).
EXIT_USAGE = 2


def _user_overrides(argv: list[str]) -> list[str] | None:
    """The overrides to precheck, or None when the command is not a plain single run."""
    if any(a.startswith("-") for a in argv):  # -m/--multirun, --cfg, --help, ...: Hydra's job
        return None
    return [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _friendly(err: Exception, overrides: list[str], compose, new_keys_ok: bool = True) -> str:
    from omegaconf import OmegaConf

    text = str(err).strip()
    missing_key = re.search(r"Could not override '([\w.]+)'", text) or re.search(
        r"Key '([\w.]+)' is not in struct", text
    )
    if missing_key:
        full = missing_key.group(1)
        parent, _, leaf = full.rpartition(".")
        clean = [o for o in overrides if not o.lstrip("+~").startswith(full + "=")]
        try:
            node = OmegaConf.select(compose(clean), parent) if parent else compose(clean)
            keys = list(node.keys()) if node is not None else []
        except Exception:
            keys = []
        where = f"Keys under '{parent}'" if parent else "Top-level keys"
        return (
            f"Unknown config key '{full}'.{_suggest(leaf, keys)} "
            + (f"{where}: {', '.join(map(str, keys))}. " if keys else "")
            + (f"To add a new key on purpose, write +{full}=..." if new_keys_ok else "")
        ).strip()
    group = re.search(r"Could not find '(\w+)/([\w.-]+)'", text)
    if group:
        options = re.search(r"Available options in '\w+':\s*\n((?:\s+\S+\n?)+)", text)
        names = [n for n in options.group(1).split() if not n.startswith("_")] if options else []
        return (
            f"Unknown option {group.group(1)}={group.group(2)}."
            f"{_suggest(group.group(2), names)} "
            + (f"Choose one of: {', '.join(names)}." if names else "")
        )
    return text.splitlines()[0] if text else type(err).__name__


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
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import genlab.resolvers  # noqa: F401
    from genlab.config import validate

    def compose(ov):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name, overrides=ov)

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise GenlabError(_friendly(err, overrides, compose, config_name == "train")) from None
    if config_name == "train":
        validate(cfg)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    print(f"genlab: error: {message}", file=sys.stderr)
    sys.exit(code)
