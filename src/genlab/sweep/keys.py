"""Which keys a sweep varies, and the names derived from them.

When a sweep starts, its process records the swept keys in `<sweep dir>/sweep.json`
(genlab.sweep.callback). Each job reads them back to name its folder and its W&B run after its
own values (`beta=0.025,latent_dim=16`), and the report reads them to lay out its tables and
panels. Keys come from Hydra's own override grammar, so whatever a sweeper accepts (`a,b,c`,
`range()`, `choice()`, `interval()`, `tag(log, ...)`, `glob()`) is understood the same way here.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

SWEEP_FILE = "sweep.json"
# Longest folder name most file systems accept is 255 bytes; leave room for "<num>_".
_MAX_LABEL = 200


def overrides_parser(config_loader=None):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create(config_loader=config_loader)


def sweeper_param_overrides(params: Any) -> list[str]:
    """`hydra.sweeper.params` ({key: "a,b,c"}) as override strings, as Hydra's sweepers read it."""
    if not params:
        return []
    return [f"{key}={value}" for key, value in dict(params).items()]


def swept_keys(overrides: list[str], config_loader=None) -> list[str]:
    """The keys given as sweeps in `overrides`, in order of first appearance. As in Hydra's
    sweepers, the last override of a key wins: `model.beta=1` after `model.beta=1,2` is fixed."""
    final: dict[str, bool] = {}
    for override in overrides_parser(config_loader).parse_overrides(list(overrides)):
        final[override.key_or_group] = override.is_sweep_override()
    return [key for key, swept in final.items() if swept]


def job_values(overrides: list[str], keys: list[str]) -> dict[str, str]:
    """{key: value as written} of the swept `keys` among one job's overrides."""
    found: dict[str, str] = {}
    wanted = set(keys)
    for override in overrides_parser().parse_overrides(list(overrides)):
        if override.key_or_group in wanted and not override.is_sweep_override():
            found[override.key_or_group] = override.get_value_element_as_str()
    return {key: found[key] for key in keys if key in found}


def short_names(keys: list[str]) -> dict[str, str]:
    """`model.beta` -> `beta`, unless two keys share a last component (then the full key)."""
    leaf = {key: re.split(r"[./]", key)[-1] for key in keys}
    counts: dict[str, int] = {}
    for name in leaf.values():
        counts[name] = counts.get(name, 0) + 1
    return {key: (leaf[key] if counts[leaf[key]] == 1 else key) for key in keys}


def label(values: dict[str, str]) -> str:
    """`beta=0.025,latent_dim=16`: a job's swept values, usable as a folder and W&B run name."""
    names = short_names(list(values))
    text = ",".join(f"{names[key]}={value}" for key, value in values.items())
    # A value may hold a path: "/" would nest folders. Keep the name one path component.
    text = text.replace("/", "_").replace("\0", "")
    if len(text.encode()) > _MAX_LABEL:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        text = text.encode()[: _MAX_LABEL - 9].decode(errors="ignore") + "~" + digest
    return text


def read_sweep_file(sweep_dir: str | Path) -> dict | None:
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_json(str(path), stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_json(path: str, _mtime_ns: int) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def job_subdir(num: Any, overrides: list[str], sweep_dir: str | Path) -> str:
    """`<num>_<label>`, e.g. `3_beta=0.025,latent_dim=16`; just `<num>` when nothing is swept."""
    info = read_sweep_file(sweep_dir)
    keys = (info or {}).get("keys") or []
    text = label(job_values(overrides, keys)) if keys else ""
    return f"{num}_{text}" if text else str(num)


def job_subdir_of(hydra: Any) -> str:
    """The folder name of the sweep job whose `hydra` node this is (the resolver
    `${genlab_job_subdir:}` of conf/train.yaml, registered by genlab.composition)."""
    overrides = OmegaConf.to_container(hydra.overrides.task, resolve=False)
    if read_sweep_file(hydra.sweep.dir) is None:
        # Not started by genlab's sweep callback (hydra.callbacks removed): Hydra's own naming.
        dirname = hydra.job.override_dirname.replace("/", "_")
        return f"{hydra.job.num}_{dirname}" if dirname else str(hydra.job.num)
    return job_subdir(hydra.job.num, overrides, hydra.sweep.dir)
