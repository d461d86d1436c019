"""Reading the YAML and JSON files of run dirs, sweeps and exports as plain data.

Those files may come from anyone (docs/security.md), so what they hold is data and nothing
else: YAML is read with a safe loader that refuses aliases and anchors (a kilobyte of nested
aliases expands to gigabytes) and every tag but the plain ones; files are capped in size and
nesting; and `refuse_interpolations` finds the `${...}` OmegaConf would resolve (an environment
variable's value, a resolver's call), so a caller refuses them before a DictConfig is made.
Each refusal is a GenlabError naming the file, and the key where there is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genlab import GenlabError

# A genlab config.yaml is a few kilobytes, a metrics.json less: a file far larger is not one.
MAX_BYTES = 4 * 2**20


def inside(path: Path, root: Path, key: str) -> Path:
    """`path` if, with every link followed, it stays inside `root`: the folder the user named
    (resolved itself, as the user chose it), so no link in a run or export leads out of it."""
    try:
        top, real = Path(root).resolve(), Path(path).resolve()
    except (OSError, RuntimeError) as err:  # a loop of links (RuntimeError before 3.13)
        raise GenlabError(f"{key}: {path} cannot be followed ({err}).") from None
    if real != top and top not in real.parents:
        raise GenlabError(
            f"{key}: {path} leads to {real}, outside its folder {root}: genlab reads a run's or "
            "export's files only from that folder itself (docs/security.md)."
        )
    return path


def _text(path: Path) -> str:
    try:
        if path.is_symlink() and path.resolve().parent != path.parent.resolve():
            raise GenlabError(
                f"{path} is a link to {path.resolve()}, outside its folder: genlab reads a "
                "run's files only from the run itself."
            )
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise GenlabError(
                f"{path} is {size:,} bytes, far more than genlab writes there (at most "
                f"{MAX_BYTES:,}): it is not a file of a genlab run."
            )
        return path.read_text()
    except UnicodeDecodeError as err:
        raise GenlabError(f"{path} is not UTF-8 text ({err.reason}).") from None
    except OSError as err:
        raise GenlabError(f"{path} cannot be read ({err.strerror or err}).") from None


def _loader():
    import yaml
    from omegaconf._utils import get_yaml_loader  # OmegaConf's number rules (1e-3 is a float)

    class PlainLoader(get_yaml_loader()):
        """Plain YAML only: no aliases or anchors, and no tags but the core schema's."""

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                what = "an alias" if isinstance(event, yaml.AliasEvent) else "an anchor"
                raise GenlabError(
                    f"line {event.start_mark.line + 1} holds {what} ({event.anchor!r}); genlab "
                    "writes no YAML aliases or anchors, and reads none"
                )
            return super().compose_node(parent, index)

    # OmegaConf's loader also builds pathlib paths from python/object tags: not here.
    PlainLoader.yaml_constructors = {
        tag: make
        for tag, make in PlainLoader.yaml_constructors.items()
        if tag is None or not tag.startswith("tag:yaml.org,2002:python/")
    }
    return PlainLoader


def read_yaml(path: str | Path, root: str | Path | None = None) -> Any:
    """The plain data (dicts, lists, str, int, float, bool, None) of a YAML file; with `root`
    (the run dir or export the user named), refused unless it lies inside root (`inside`)."""
    import yaml

    path = Path(path)
    if root is not None:
        inside(path, Path(root), str(path))
    text = _text(path)
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - the loader is a SafeLoader
    except GenlabError as err:
        raise GenlabError(f"{path} is not plain YAML: {err}.") from None
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenlabError(f"{path} is not readable YAML ({first}).") from None
    except RecursionError:
        raise GenlabError(f"{path} is nested too deeply to be a genlab file.") from None
    _check_plain(data, path, "")
    return data


def read_json(path: str | Path, root: str | Path | None = None) -> Any:
    """The plain data of a JSON file (`root`: as for read_yaml)."""
    path = Path(path)
    if root is not None:
        inside(path, Path(root), str(path))
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as err:
        raise GenlabError(f"{path} is not readable JSON ({err}).") from None
    except RecursionError:
        raise GenlabError(f"{path} is nested too deeply to be a genlab file.") from None
    _check_plain(data, path, "")
    return data


def _check_plain(data: Any, path: Path, key: str) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            if not isinstance(k, str):
                raise GenlabError(f"{path}: the key {k!r} under {key or 'the top'} is not text.")
            _check_plain(v, path, f"{key}.{k}" if key else k)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _check_plain(v, path, f"{key}[{i}]")
    elif not (data is None or isinstance(data, str | int | float | bool)):
        raise GenlabError(f"{path}: {key or 'the file'} holds a {type(data).__name__}.")


def interpolations(data: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, value) for each string of `data` that OmegaConf would treat as an interpolation."""
    if isinstance(data, dict):
        return [
            found
            for k, v in data.items()
            for found in interpolations(v, f"{key}.{k}" if key else str(k))
        ]
    if isinstance(data, list):
        return [found for i, v in enumerate(data) for found in interpolations(v, f"{key}[{i}]")]
    if isinstance(data, str) and "${" in data:
        return [(key, data)]
    return []


def refuse_interpolations(data: Any, path: str | Path) -> None:
    """A GenlabError naming the first key whose value holds `${...}`: genlab writes its files
    resolved, so such a value was put there by hand, and is never resolved."""
    found = interpolations(data)
    if found:
        key, value = found[0]
        raise GenlabError(
            f"{path}: {key} holds {value!r}, an interpolation. genlab writes this file with "
            "every value resolved and never resolves one read from a file (it could read an "
            "environment variable or call a resolver): the file was edited. Restore the value."
        )
