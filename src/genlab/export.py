"""Portable weights: a run exported to a folder that needs neither its checkpoint nor pickle.

    python -m genlab.export <run dir or .ckpt> <new folder>

writes the folder's files, in the layout Hugging Face's hub reads (so
`huggingface_hub.upload_folder` publishes it as it is):
  model.safetensors        the weights sampling uses (a DDPM trained with EMA: the averaged
                           ones, which are its checkpoint's state_dict), tensors only
  autoencoder.safetensors  a latent DDPM's only: its autoencoder's weights, so the folder needs
                           no run dir (config.json holds the autoencoder's spec)
  config.json              the model's spec (its hyperparameters), the data it was trained on
                           (genlab.pipeline.DataInfo), genlab's version, the training overrides and
                           final metrics, and the sha256 of every other file
  README.md                a model card: what it was trained on, its metrics, the command, how
                           to load

`genlab.load(folder)` reads it back with json and safetensors alone: nothing is unpickled, no
path it records is followed, config.json is read key by key (a key it should not have, or a
model type genlab does not have, is refused by name), and a missing, damaged or altered file
is refused with a GenlabError naming it. Files genlab did not write there are never read.

The files are written into `.<folder>.tmp-<pid>` beside the folder and renamed at once: a stop
(Ctrl-C, SIGTERM: one line, exit 130/143) removes it, and after a kill -9 the next export into
the same parent folder does.

The files are written with safetensors directly rather than huggingface_hub's ModelHubMixin:
the mixin would make the hub client (and its HTTP stack) a dependency of every install, own the
models' __init__ arguments as its config, and load with its own errors, where genlab checks
every file and names the one at fault.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from genlab import GenlabError, __version__
from genlab.atomic import remove_stale_temp_dirs
from genlab.resources import file_sha256
from genlab.untrusted import inside

log = logging.getLogger("genlab")

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
AE_WEIGHTS = "autoencoder.safetensors"
# 2: every file's sha256 under "files", a latent DDPM's autoencoder inside the folder.
FORMAT, FORMAT_VERSION = "genlab-export", 2
# config.json's keys, each section's own: any other is refused (_read_config).
SECTIONS = {
    "format": str,
    "format_version": int,
    "genlab_version": str,
    "name": str,
    "model": dict,
    "autoencoder": dict | None,
    "data": dict,
    "weights": dict,
    "files": dict,
    "training": dict,
}
WEIGHTS_KEYS = {"file": str, "ema": bool, "parameters": int, "checkpoint": str}
TRAINING_KEYS = {"overrides": list | None, "metrics": dict}


def is_export(path: Path) -> bool:
    """An export folder, or one of its two files."""
    if path.is_file():
        return path.name in (WEIGHTS, CONFIG)
    return path.is_dir() and any((path / name).exists() for name in (WEIGHTS, CONFIG))


# -- writing ---------------------------------------------------------------------------------------
def _run_records(run_dir: Path | None) -> tuple[list[str] | None, dict[str, float]]:
    """(the overrides the run was started with, metrics.json) of a run dir, where it has them,
    read as data (genlab.untrusted): the overrides are text as written, never resolved."""
    from genlab.untrusted import read_json, read_yaml

    if run_dir is None:
        return None, {}
    overrides = None
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        overrides = read_yaml(recorded, root=run_dir)
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise GenlabError(f"{recorded} is not a list of overrides (key=value text).")
    found = (run_dir / "metrics.json").is_file()
    metrics = read_json(run_dir / "metrics.json", root=run_dir) if found else {}
    if not isinstance(metrics, dict):
        raise GenlabError(f"{run_dir / 'metrics.json'} is not a table of metric values.")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GenlabError(f"{run_dir / 'metrics.json'}: {key} is {value!r}, not a number.")
    return overrides, {k: float(v) for k, v in metrics.items()}


def _tensors(state: dict, where) -> dict:
    strays = [k for k, v in state.items() if not hasattr(v, "detach")]
    if strays:  # safetensors holds tensors only; genlab's models keep nothing else there
        raise GenlabError(f"{where}: state_dict entries that are not tensors: {strays}")
    # Copies: safetensors refuses tensors that share memory, and needs them contiguous.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def export_run(run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export the run (a run dir, its checkpoints/ folder or a .ckpt: the checkpoint sample.py
    would use) into `out_dir`, a new or empty folder; returns it."""
    from safetensors.torch import save_file

    from genlab.models import MODEL_CLASSES
    from genlab.pipeline import data_info
    from genlab.runs import load_run

    out = Path(out_dir).expanduser()
    if is_export(Path(run).expanduser()):
        raise GenlabError(f"{run} is an export already: copy the folder instead.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenlabError(f"{out} exists and is not an empty folder: export into a new one.")
    loaded = load_run(run, MODEL_CLASSES, "cpu")
    model = loaded.model
    weights = {WEIGHTS: _tensors(model.state_dict(), loaded.checkpoint)}
    overrides, metrics = _run_records(loaded.run_dir)
    ema = getattr(model.spec, "ema_decay", None)
    data = data_info(loaded.cfg.data if loaded.cfg is not None else None, model)
    hparams, autoencoder = model.spec.hparams(), None
    if model.spec_class.has_autoencoder:  # it travels with the model: no path is recorded
        ae = model.autoencoder
        weights[AE_WEIGHTS] = _tensors(ae.state_dict(), model.spec.autoencoder)
        hparams["autoencoder"] = AE_WEIGHTS
        autoencoder = {"model": ae.spec.hparams()}
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genlab_version": __version__,
        "name": str(loaded.cfg.name) if loaded.cfg is not None else f"{loaded.name}",
        "model": hparams,
        "autoencoder": autoencoder,
        "data": data.as_dict(),
        "weights": {
            "file": WEIGHTS,
            "ema": bool(ema),  # the EMA of the training weights (what sampling uses), or those
            "parameters": sum(int(v.numel()) for v in model.parameters()),
            "checkpoint": loaded.checkpoint.name,
        },
        "files": {},
        "training": {"overrides": overrides, "metrics": metrics},
    }
    for stale in (
        remove_stale_temp_dirs(out.parent, (WEIGHTS, CONFIG)) if out.parent.is_dir() else ()
    ):
        log.warning("Removed %s, left by an export that was killed", stale)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, tensors in weights.items():
            save_file(tensors, str(tmp / name), metadata={"format": "pt", "genlab": __version__})
        (tmp / CARD).write_text(model_card(config, ema))
        config["files"] = {name: file_sha256(tmp / name) for name in (*weights, CARD)}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above): the rename below puts the whole folder there
        os.replace(tmp, out)  # all the files appear at once, or none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(config: dict[str, Any], ema: float | None) -> str:
    """README.md of an export: what it is, what it was trained on, its final metrics."""
    model, data, training = config["model"], config["data"], config["training"]
    kind, shape = model["name"], "x".join(map(str, data["image_shape"]))
    classes = data["num_classes"]
    names = f": {', '.join(data['class_names'])}" if data.get("class_names") else ""
    overrides = training["overrides"]
    command = (
        f"`{' '.join(['python train.py', *map(shlex.quote, overrides)])}`"
        if overrides is not None
        else "unknown (the run dir held no .hydra/overrides.yaml); the model's settings are in "
        "config.json"
    )
    held = (
        f"the EMA of the training weights (model.ema_decay={ema}), which validation, test and "
        "sampling use"
        if ema
        else "the trained weights"
    )
    ae_line = (
        f"\n`{AE_WEIGHTS}` holds the weights of the {config['autoencoder']['model']['name']} "
        "whose latent codes it models (its spec is in config.json)."
        if config.get("autoencoder")
        else ""
    )
    metrics = training["metrics"]
    table = (
        "| metric | value |\n|---|---|\n"
        + "".join(f"| {k} | {v!r} |\n" for k, v in sorted(metrics.items()))
        if metrics
        else "The run dir held no metrics.json.\n"
    )
    return f"""---
library_name: genlab
tags: [genlab, {kind}, {data["name"] or "images"}]
---

# {config["name"]}

A genlab **{kind}** ({config["weights"]["parameters"]:,} parameters) trained on
**{data["name"] or "an unknown dataset"}**: images {shape}, values in [0, 1],
{classes} classes{names}.
Exported with genlab {config["genlab_version"]} from the checkpoint
`{config["weights"]["checkpoint"]}`; `model.safetensors` holds {held}.{ae_line}

## Training

Command: {command}

## Final metrics (metrics.json)

{table}
## Use

```python
import genlab

pipe = genlab.load("path/to/this/folder")  # also device="cuda"
images = pipe.sample(16, seed=0)  # [16, {", ".join(map(str, data["image_shape"]))}] in [0, 1]
```

`config.json` holds the model's spec, the data it was trained on and the sha256 of every
other file; loading reads no pickle. See genlab's docs/python-api.md.
"""


# -- reading ---------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    """config.json, key by key: only the keys an export has, of their types (its values are
    never resolved: nothing of it reaches OmegaConf)."""
    from genlab.untrusted import read_json

    def bad(why: str) -> GenlabError:
        return GenlabError(f"{path} {why}: export the run again (python -m genlab.export).")

    config = read_json(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise bad(f'is not the config.json of a genlab export (no "format": "{FORMAT}")')
    if config.get("format_version") != FORMAT_VERSION:
        raise bad(
            f"has format_version {config.get('format_version')!r}; this genlab reads "
            f"{FORMAT_VERSION} (older exports recorded less: not every file's sha256)"
        )
    for where, node, keys in (
        ("", config, SECTIONS),
        ("weights.", config.get("weights"), WEIGHTS_KEYS),
        ("training.", config.get("training"), TRAINING_KEYS),
    ):
        if not isinstance(node, dict):
            raise bad(f"has no {where.rstrip('.')!r} section")
        for key in sorted(set(node) | set(keys)):
            if key not in keys:
                raise bad(f"has the key {where}{key}, which an export does not have")
            if key not in node or not isinstance(node[key], keys[key]):
                raise bad(f"has no {where}{key} of the right type")
    if config["weights"]["file"] != WEIGHTS:
        raise bad(f"names weights.file {config['weights']['file']!r}, not {WEIGHTS}")
    return config


def _check_files(folder: Path, config: dict[str, Any]) -> None:
    """Every file config.json records is there, with the recorded sha256; it records exactly
    the files an export of its model has."""
    config_path = folder / CONFIG
    wanted = {WEIGHTS, CARD} | ({AE_WEIGHTS} if config["autoencoder"] is not None else set())
    files = config["files"]
    for name in sorted(set(files) ^ wanted):
        what = "an export of this model does not have" if name in files else "it must"
        raise GenlabError(
            f"{config_path} {'records' if name in files else 'records no sha256 of'} the file "
            f"files.{name}, which {what}: export the run again (python -m genlab.export)."
        )
    for name in sorted(wanted):
        if not (folder / name).is_file():
            raise GenlabError(
                f"{folder / name} is missing: an export folder holds {', '.join(sorted(wanted))} "
                f"and {CONFIG} (python -m genlab.export <run> <folder>)."
            )
        inside(folder / name, folder, f"files.{name}")  # no link leads out of the export
        if not isinstance(files[name], str) or file_sha256(folder / name) != files[name]:
            raise GenlabError(
                f"{folder / name} is not the file that was exported: its sha256 differs from the "
                f"one {config_path} records (changed or damaged since). Export the run again."
            )


def _build(kind_key: str, hparams: Any, config_path: Path, kinds=None):
    """The model `hparams` (an export's config.json section) describes, weights not loaded:
    its type from genlab's registry, every key checked against its spec."""
    from genlab.models import model_class
    from genlab.models.catalog import MODEL_SPECS, REGISTER_HINT
    from genlab.specs import build_spec, user_keys

    name = hparams.get("name") if isinstance(hparams, dict) else None
    known = kinds or tuple(MODEL_SPECS)
    if name not in known:
        raise GenlabError(
            f"{config_path} describes a {kind_key} of type {name!r}; this genlab reads "
            f"{', '.join(known)} there." + (f" {REGISTER_HINT}" if name not in MODEL_SPECS else "")
        )
    cls = model_class(name)
    extra = sorted(set(hparams) - set(user_keys(cls.spec_class)))
    if extra:  # `_target_` among them: an export names no class
        raise GenlabError(
            f"{config_path} has the key {kind_key}.{extra[0]}, which a {name} does not have: "
            "export the run again (python -m genlab.export)."
        )
    try:
        return cls, build_spec(cls.spec_class, hparams)
    except (GenlabError, TypeError, ValueError) as err:
        raise GenlabError(
            f"{config_path}: {kind_key} does not describe a model genlab can build: {err}"
        ) from None


def _fill(model, weights_path: Path, config_path: Path):
    weights = _read_weights(weights_path)
    try:
        model._check_weights_fit(weights)
        model.load_state_dict(weights)
    except (GenlabError, RuntimeError) as err:
        raise GenlabError(f"{weights_path} does not fit {config_path}: {err}") from None
    return model


def load_export(path: str | os.PathLike, device="cpu"):
    """The Pipeline of an export folder (or of one of its files), in eval mode on `device`."""
    from genlab.models.catalog import autoencoders
    from genlab.pipeline import DataInfo, Pipeline
    from genlab.sample.options import pick_device

    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise GenlabError(
            f"{config_path} is missing: an export folder holds {CONFIG}, {WEIGHTS} and "
            f"{CARD} (python -m genlab.export <run> <folder>)."
        )
    config = _read_config(config_path)
    _check_files(folder, config)
    cls, spec = _build("model", config["model"], config_path)
    has_ae = cls.spec_class.has_autoencoder
    if has_ae != (config["autoencoder"] is not None):
        raise GenlabError(
            f"{config_path}: autoencoder is {'missing' if has_ae else 'there'} for a {cls.kind}: "
            "export the run again (python -m genlab.export)."
        )
    try:
        data = DataInfo.from_dict(config["data"])
        if has_ae:  # the autoencoder from the folder, never from the path it came from
            ae_cls, ae_spec = _build(
                "autoencoder.model", config["autoencoder"].get("model"), config_path, autoencoders()
            )
            ae = _fill(ae_cls(ae_spec), folder / AE_WEIGHTS, config_path)
            model = cls.with_autoencoder(spec, ae)
        else:
            model = cls(spec)
    except (GenlabError, KeyError, TypeError, ValueError) as err:
        raise GenlabError(
            f"{config_path} does not describe a model genlab can build: {err}"
        ) from None
    _fill(model, folder / WEIGHTS, config_path)
    device = pick_device(device) if isinstance(device, str) else device
    return Pipeline(model.to(device).eval(), data, source=folder)


def _read_weights(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise GenlabError(f"{path} is not a readable safetensors file ({err}).") from None


# -- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None, prog: str = "python -m genlab.export") -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a trained run to model.safetensors + config.json + README.md, "
        "loadable with genlab.load(folder).",
    )
    parser.add_argument("run", help="a run dir, its checkpoints/ folder or a .ckpt file")
    parser.add_argument("out_dir", help="the folder to write: new, or empty")
    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    args = parser.parse_args(argv)
    from genlab.exits import fail, one_line_on_stop

    stopped = f"Export stopped by {{by}}; nothing was written to {args.out_dir}."
    try:
        with one_line_on_stop(stopped):  # the temporary folder goes, as for Ctrl-C
            out = export_run(args.run, args.out_dir)
    except GenlabError as err:
        fail(str(err))
    print(out)


if __name__ == "__main__":
    main()
