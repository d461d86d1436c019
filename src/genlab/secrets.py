"""Keep secrets out of everything genlab writes.

Values of environment variables that look like credentials (WANDB_API_KEY, *_KEY, *_TOKEN,
*_SECRET, and PASSWORD or PASSWD anywhere in the name) are replaced by *** in saved configs,
logged hyperparameters and Hydra's own record of the run, wherever they were interpolated or
typed; values of any length (see MIN_SUBSTRING for how short ones are matched).
"""

from __future__ import annotations

import contextlib
import netrc
import os
import re
import sys
from pathlib import Path
from typing import Any

_SECRET_NAME = re.compile(r"(API_KEY|_KEY|_TOKEN|_SECRET)$|PASSWORD|PASSWD|^WANDB_API_KEY$", re.I)
MASK = "***"


# Values at least this long are masked wherever they occur inside a text; shorter ones (a
# 1-3 character token is a typo or a test, but still a secret) only where they stand as a whole
# value: after `=`, `:`, a quote, a bracket, a comma or a space, up to the next such delimiter.
# Replacing every "a" inside paths and words would garble the records.
MIN_SUBSTRING = 6
_BEFORE, _AFTER = r"(?:^|(?<=[\s=:\[,'\"]))", r"(?=$|[\s,\]'\"])"


def secret_values() -> list[str]:
    """The values of every secret-named environment variable, however short."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and v}
    return sorted(values, key=len, reverse=True)  # longest first: no partial masking


def _redact_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if len(s) >= MIN_SUBSTRING:
            text = text.replace(s, MASK)
        else:
            text = re.sub(_BEFORE + re.escape(s) + _AFTER, MASK, text, flags=re.M)
    return text


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a nested dict/list/str structure with secret values masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return _redact_text(obj, secrets)
    if isinstance(obj, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj


def redact_files(paths) -> None:
    """Mask secrets inside text files written by others (Hydra's .hydra/*.yaml)."""
    secrets = secret_values()
    if not secrets:
        return
    for path in map(Path, paths):
        if path.is_file():
            text = path.read_text()
            masked = redact(text, secrets)
            if masked != text:
                path.write_text(masked)


@contextlib.contextmanager
def masked_argv():
    """sys.argv with secrets masked, for libraries that record the command line (W&B)."""
    original = sys.argv
    sys.argv = redact(list(original))
    try:
        yield
    finally:
        sys.argv = original


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_wandb_online(mode: Any) -> None:
    """Refuse logger.wandb.mode=online without a W&B API key (wandb would raise mid-run)."""
    from genlab import GenlabError

    if mode == "online" and not wandb_api_key_available():
        raise GenlabError(
            "logger.wandb.mode=online, but no W&B API key is found (WANDB_API_KEY, or "
            "~/.netrc from `wandb login`). Run `wandb login` or set WANDB_API_KEY, or log "
            "offline with logger.wandb.mode=offline (upload later with `wandb sync`)."
        )
