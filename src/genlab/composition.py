"""Ground floor: where the configs are, how they are composed, and what a failed composition
tells the user.

- `CONF_DIR`: the conf/ folder every entry point and test composes from: the installed
  package's genlab/conf (a wheel carries the repository's conf/ there, setup.py), else the
  checkout's conf/ (an editable install, PYTHONPATH=src)
- `register_resolvers()`: every OmegaConf resolver genlab's YAML uses, registered in one place
- `hydra_context()` / `compose()`: Hydra's compose API on conf/ (or on the running app's)
- `friendly_message()`: a Hydra/OmegaConf composition error as one readable paragraph
  ("did you mean", the keys or options there are)

Torch-free, and it imports nothing of genlab at module level but GenlabError, so the CLI, the
sweep precheck, the data module and the tests can all stand on it without import cycles. (One
lazy import happens only when it is needed: the sweep's job naming, when Hydra resolves a sweep
job's folder.)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from genlab import GenlabError


def _conf_dir() -> Path:
    from importlib.resources import files

    packaged = files("genlab") / "conf"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _conf_dir()
HYDRA_VERSION_BASE = "1.3"

__all__ = [
    "CONF_DIR",
    "GenlabError",
    "compose",
    "friendly_message",
    "hydra_context",
    "register_resolvers",
    "suggest",
]


# -- resolvers ---------------------------------------------------------------------------------
def _pid() -> int:
    # In the run dir name: two runs started in the same microsecond still get different dirs.
    return os.getpid()


def _job_subdir(*, _root_: Any) -> str:
    # The folder name of a sweep job comes from the swept keys that the sweep recorded; that
    # logic (Hydra's override grammar, sweep.json) is the sweep's, imported only when a sweep
    # job's folder is resolved.
    from genlab.sweep.keys import job_subdir_of

    return job_subdir_of(_root_.hydra)


def _slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node to ask Slurm for: trainer.devices when training on GPUs, else none."""
    if str(accelerator).lower() in ("gpu", "cuda") and isinstance(devices, int) and devices > 0:
        return devices
    return None


def _image_classes(path: Any) -> int:
    """data.num_classes of `data=image_folder`: its class folders (1 when unlabelled)."""
    from genlab.image_files import count_classes

    return count_classes(path)


# name -> (function, use_cache). Every `${genlab_...:}` in conf/ is one of these.
RESOLVERS = {
    "genlab_pid": (_pid, True),  # conf/train.yaml: hydra.run.dir, hydra.sweep.dir
    "genlab_job_subdir": (_job_subdir, False),  # conf/train.yaml: hydra.sweep.subdir
    "genlab_slurm_gpus": (_slurm_gpus, False),  # conf/hydra/launcher/slurm.yaml
    "genlab_image_classes": (_image_classes, False),  # conf/data/image_folder.yaml
}


def register_resolvers() -> None:
    """Register every resolver of RESOLVERS with OmegaConf; calling it again does nothing."""
    from omegaconf import OmegaConf

    for name, (function, use_cache) in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=use_cache)


# -- composing ---------------------------------------------------------------------------------
@contextlib.contextmanager
def hydra_context() -> Iterator[Any]:
    """Hydra's compose API, initialised on CONF_DIR for the duration (or the running app's, when
    one is initialised already, e.g. inside `python sample.py`); yields Hydra's config loader."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().hydra.config_loader
        return
    with initialize_config_dir(str(CONF_DIR), version_base=HYDRA_VERSION_BASE):
        yield GlobalHydra.instance().hydra.config_loader


def compose(
    config_name: str,
    overrides: Sequence[str] = (),
    *,
    return_hydra_config=False,
    user_plugins=False,
):
    """The config `python <config_name>.py <overrides>` would get (Hydra's compose API).

    `user_plugins`: the overrides are the user's command line, so the modules the composed config
    names in `plugins` are imported (genlab.models.catalog.load_plugins): the command line's
    own `plugins=`, or a file of the user's config folder that sets `plugins` (docs/extending.md).
    Such a file may also select the model the module offers, whose spec node does not exist
    until the module is imported: `plugins` is then read from a composition with an empty
    stand-in for the missing node, as Hydra reads hydra.searchpath before it composes."""
    from hydra import compose as hydra_compose
    from hydra.errors import MissingConfigException

    with hydra_context():

        def composed():
            return hydra_compose(
                config_name, overrides=list(overrides), return_hydra_config=return_hydra_config
            )

        if not user_plugins:
            return composed()
        from genlab.models.catalog import MODEL_SPECS, load_plugins

        try:
            cfg = composed()
        except MissingConfigException as err:
            missing = _SPEC_NODE.search(str(err))
            if missing is None or missing.group(1) in MODEL_SPECS:
                raise
            declared = _declared_plugins(config_name, overrides)
            if not declared:
                raise
            load_plugins(declared)
            cfg = composed()
        load_plugins(_plugins_of(cfg))
        return cfg


def _plugins_of(cfg) -> list:
    """The composed `plugins`, when it is a list (or one name); any other value is left for
    genlab.run_rules.validate_run_config to refuse by name."""
    from omegaconf import OmegaConf

    plugins = cfg.get("plugins")
    if isinstance(plugins, str):
        return [plugins]
    return list(plugins) if OmegaConf.is_list(plugins) else []


# Hydra's message for a `- /_<name>_spec_@_here_` of a model no module has registered, and for
# the override of a key that is not there.
_SPEC_NODE = re.compile(r"Could not load '_(\w+)_spec_'")
_UNKNOWN_KEY = re.compile(r"Could not (?:override |append to |delete from config\. )'([\w.]+)'")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _declared_plugins(config_name: str, overrides: Sequence[str]) -> list[str]:
    """`plugins` of the config composed with an empty stand-in for each model spec node that is
    not registered, and without the overrides of keys the stand-ins lack (the model's own); []
    when it does not compose even so. The stand-ins are removed after."""
    from hydra import compose as hydra_compose
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    stand_ins: list[str] = []
    overrides = list(overrides)
    try:
        for _ in range(8 + len(overrides)):  # each step adds a stand-in or drops an override
            try:
                cfg = hydra_compose(config_name, overrides=overrides)
            except Exception as err:  # the real composition reports it
                missing = _SPEC_NODE.search(str(err))
                node = f"_{missing.group(1)}_spec_.yaml" if missing else None
                unknown = _UNKNOWN_KEY.search(str(err))
                kept = [o for o in overrides if not unknown or _key(o) != unknown.group(1)]
                if node is not None and node not in store.repo:
                    store.store(name=node, node={})
                    stand_ins.append(node)
                elif len(kept) < len(overrides):
                    overrides = kept
                else:
                    return []
                continue
            return _plugins_of(cfg)
        return []
    finally:
        for node in stand_ins:
            store.repo.pop(node, None)


# -- friendly errors ---------------------------------------------------------------------------
# Keys genlab had and replaced, and what to write instead: an old command line gets the new way
# (an older checkpoint's stored key is dropped when it loads: genlab.specs.build_spec).
RETIRED_KEYS = {
    "model.lr_schedule": (
        "the learning-rate schedule is the scheduler= config group now (conf/scheduler/): "
        "model.lr_schedule=cosine is scheduler=warmup_cosine scheduler.warmup_steps=0, "
        "model.lr_schedule=constant is scheduler=constant (the default)"
    ),
}


def drop_retired_keys(cfg) -> list[str]:
    """Remove the RETIRED_KEYS from a finished run's config (written by an older genlab): they
    said how it was trained, not how to read it back. Returns the keys removed."""
    from omegaconf import OmegaConf

    removed = []
    for key in RETIRED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:
            del node[leaf]
            removed.append(key)
    return removed


def retired_key_message(key: str) -> str | None:
    """The paragraph for a key genlab no longer has, else None."""
    if key in RETIRED_KEYS:
        return f"{key} no longer exists: {RETIRED_KEYS[key]}."
    return None


def suggest(word: str, choices) -> str:
    """The "Did you mean 'x'?" sentence for the choices close to `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def friendly_message(
    err: Exception, overrides: list[str], config_name: str, new_keys_ok: bool = True
) -> str:
    """One paragraph for a composition error of `config_name` with `overrides`: an unknown key
    (with the keys there are), an unknown group option (with the options), else the first line
    of Hydra's own message. (Bad values compose: the model schema is untyped on purpose, see
    genlab.specs.schema_node, and genlab.run_rules.validate_run_config names them.)"""
    text = str(err).strip()
    grammar = override_syntax_message(err, overrides)
    if grammar:
        return grammar
    missing_key = re.search(r"Could not override '([\w.]+)'", text) or re.search(
        r"Key '([\w.]+)' is not in struct", text
    )
    if missing_key:
        retired = retired_key_message(missing_key.group(1))
        if retired:
            return retired
        return _unknown_key(missing_key.group(1), overrides, config_name, new_keys_ok)
    spec = re.search(r"Could not load '_(\w+)_spec_'", text)
    if spec:  # a conf/model/<name>.yaml of the user's, for a model not registered
        from genlab.models.catalog import REGISTER_HINT

        return f"model={spec.group(1)}: genlab knows no model {spec.group(1)!r}. {REGISTER_HINT}"
    # `model=vea` (find), an entry of a list `logger=[csv,bogus]` (load), `hydra/launcher=x`
    group = re.search(r"Could not (?:find|load) '([\w/]+)/([\w.-]+)'", text)
    if group:
        from genlab.extras import for_missing_config

        missing_extra = for_missing_config(group.group(1), group.group(2))
        if missing_extra:
            return missing_extra
        options = re.search(r"Available options in '[\w/]+':\s*\n((?:\s+\S+\n?)+)", text)
        names = options.group(1).split() if options else _options(group.group(1))
        names = [n for n in names if not n.startswith("_")]
        return (
            f"Unknown option {group.group(1)}={group.group(2)}."
            f"{suggest(group.group(2), names)} "
            + (f"Choose one of: {', '.join(names)}." if names else "")
        )
    if not text:
        return type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Hydra's "... raised while composing config:" says what failed on the next line.
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


def _options(group: str) -> list[str]:
    """The options of a config group in conf/ (where Hydra's message does not list them)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def override_syntax_message(err: Exception, overrides: Sequence[str] = ()) -> str | None:
    """The paragraph for an override Hydra's grammar cannot read (unbalanced brackets or quotes,
    a bare `=` inside a value), naming its key and how to quote it; None for other errors."""
    from hydra.errors import OverrideParseException

    if isinstance(err, OverrideParseException):
        override, detail = err.override, err.message
    elif isinstance(err, ValueError) and "override must be" in str(err):
        # Hydra's ValueError for an override without a key (`=1`)
        override = next((o for o in overrides if o.lstrip("+~").startswith("=")), "")
        detail = str(err)
    else:
        return None
    # Hydra's own parser reason, without its "Error parsing override" and "See <docs>" lines.
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    detail = next((x for x in lines if not x.startswith(("Error parsing", "See http"))), "")
    detail = detail or (lines[0] if lines else "")
    key, sep, value = override.partition("=")
    key = key.lstrip("+~")
    if not sep or not key:
        return (
            f"Cannot read the override '{override}' ({detail}): write key=value, e.g. "
            "model.beta=0.5 (a key to add is +key=value, one to delete ~key)."
        )
    # genlab's own checkpoint names (epoch=004-step=2110.ckpt) hold '=', which Hydra's grammar
    # reads as a second assignment unless the value is quoted.
    return (
        f"Cannot read the value of {key} in '{override}' ({detail}). Quote a value holding "
        "'=', spaces, commas, brackets or quotes for Hydra, inside shell quotes: "
        f"'{key}=\"{value}\"' (a checkpoint name like epoch=004-step=2110.ckpt needs it). "
        "A list needs balanced brackets, e.g. model.mlp.hidden=[64,32]."
    )


def _unknown_key(full: str, overrides: list[str], config_name: str, new_keys_ok: bool) -> str:
    from omegaconf import OmegaConf

    parent, _, leaf = full.rpartition(".")
    # The keys that do exist there: composed again without the override that named the key.
    clean = [o for o in overrides if not o.lstrip("+~").startswith(full + "=")]
    try:
        cfg = compose(config_name, clean)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = list(node.keys()) if node is not None else []
    except Exception:
        keys = []
    where = f"Keys under '{parent}'" if parent else "Top-level keys"
    return (
        f"Unknown config key '{full}'.{suggest(leaf, keys)} "
        + (f"{where}: {', '.join(map(str, keys))}. " if keys else "")
        + (f"To add a new key on purpose, write +{full}=..." if new_keys_ok else "")
    ).strip()
