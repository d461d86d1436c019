"""Portable weights: a run exported to a folder that needs neither its checkpoint nor pickle.

    python -m genlab.export <run dir or .ckpt> <new folder>

writes the folder's three files, in the layout Hugging Face's hub reads (so
`huggingface_hub.upload_folder` publishes it as it is):
  model.safetensors  the weights sampling uses (a DDPM trained with EMA: the averaged ones,
                     which are its checkpoint's state_dict), tensors only
  config.json        the model's spec (its hyperparameters), the data it was trained on
                     (genlab.api.DataInfo), genlab's version, the training overrides and final
                     metrics, and the sha256 of model.safetensors
  README.md          a model card: what it was trained on, its metrics, the command, how to load

`genlab.load(folder)` reads it back with json and safetensors alone: nothing is unpickled, and a
missing, damaged or altered file is refused with a GenlabError naming it.

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
import signal
from pathlib import Path
from typing import Any

from genlab import GenlabError, __version__
from genlab.atomic import remove_stale_temp_dirs
from genlab.resources import file_sha256

log = logging.getLogger("genlab")

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
FORMAT, FORMAT_VERSION = "genlab-export", 1


def is_export(path: Path) -> bool:
    """An export folder, or one of its two files."""
    if path.is_file():
        return path.name in (WEIGHTS, CONFIG)
    return path.is_dir() and any((path / name).exists() for name in (WEIGHTS, CONFIG))


# -- writing ---------------------------------------------------------------------------------------
def _run_records(run_dir: Path | None) -> tuple[list[str] | None, dict[str, float]]:
    """(the overrides the run was started with, metrics.json) of a run dir, where it has them."""
    if run_dir is None:
        return None, {}
    overrides = None
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if recorded.is_file():
        from omegaconf import OmegaConf

        overrides = [str(o) for o in OmegaConf.load(recorded)]
    metrics = {}
    if (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GenlabError(f"{run_dir / 'metrics.json'} is not readable JSON ({err}).") from None
    return overrides, {k: float(v) for k, v in metrics.items()}


def export_run(run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export the run (a run dir, its checkpoints/ folder or a .ckpt: the checkpoint sample.py
    would use) into `out_dir`, a new or empty folder; returns it."""
    from safetensors.torch import save_file

    from genlab.api import data_info
    from genlab.sample.loader import load_run

    out = Path(out_dir).expanduser()
    if is_export(Path(run).expanduser()):
        raise GenlabError(f"{run} is an export already: copy the folder instead.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GenlabError(f"{out} exists and is not an empty folder: export into a new one.")
    loaded = load_run(run, "cpu")
    model = loaded.model
    state = model.state_dict()
    strays = [k for k, v in state.items() if not hasattr(v, "detach")]
    if strays:  # safetensors holds tensors only; genlab's models keep nothing else there
        raise GenlabError(f"{loaded.checkpoint}: state_dict entries that are not tensors: {strays}")
    # Copies: safetensors refuses tensors that share memory, and needs them contiguous.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    overrides, metrics = _run_records(loaded.run_dir)
    ema = getattr(model.spec, "ema_decay", None)
    data = data_info(loaded.cfg.data if loaded.cfg is not None else None, model)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genlab_version": __version__,
        "name": str(loaded.cfg.name) if loaded.cfg is not None else f"{loaded.name}",
        "model": model.spec.hparams(),
        "data": data.as_dict(),
        "weights": {
            "file": WEIGHTS,
            "sha256": "",
            "ema": bool(ema),  # the EMA of the training weights (what sampling uses), or those
            "parameters": sum(int(v.numel()) for v in model.parameters()),
            "checkpoint": loaded.checkpoint.name,
        },
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
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "genlab": __version__})
        config["weights"]["sha256"] = file_sha256(tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(config, ema))
        if out.exists():
            out.rmdir()  # empty (checked above): the rename below puts the whole folder there
        os.replace(tmp, out)  # all three files appear at once, or none
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
    weights = (
        f"the EMA of the training weights (model.ema_decay={ema}), which validation, test and "
        "sampling use"
        if ema
        else "the trained weights"
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
`{config["weights"]["checkpoint"]}`; `model.safetensors` holds {weights}.

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

`config.json` holds the model's spec, the data it was trained on and the sha256 of
`model.safetensors`; loading reads no pickle. See genlab's docs/python-api.md.
"""


# -- reading ---------------------------------------------------------------------------------------
def _read_config(path: Path) -> dict[str, Any]:
    def bad(why: str) -> GenlabError:
        return GenlabError(f"{path} {why}: export the run again (python -m genlab.export).")

    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad(f"is not readable JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise bad(f'is not the config.json of a genlab export (no "format": "{FORMAT}")')
    if not isinstance(config.get("format_version"), int) or config["format_version"] > 1:
        raise bad(f"has format_version {config.get('format_version')!r}, newer than this genlab's")
    for key in ("model", "data", "weights"):
        if not isinstance(config.get(key), dict):
            raise bad(f"has no {key!r} section")
    if not isinstance(config["weights"].get("sha256"), str):
        raise bad("records no sha256 of model.safetensors")
    return config


def load_export(path: str | os.PathLike, device="cpu"):
    """The Pipeline of an export folder (or of one of its files), in eval mode on `device`."""
    from genlab.api import DataInfo, Pipeline
    from genlab.models import MODEL_CLASSES
    from genlab.sample.options import pick_device
    from genlab.specs import build_spec, user_keys

    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise GenlabError(
                f"{folder / name} is missing: an export folder holds {CONFIG}, {WEIGHTS} and "
                f"{CARD} (python -m genlab.export <run> <folder>)."
            )
    config_path, weights_path = folder / CONFIG, folder / WEIGHTS
    config = _read_config(config_path)
    if file_sha256(weights_path) != config["weights"]["sha256"]:
        raise GenlabError(
            f"{weights_path} is not the file that was exported: its sha256 differs from the one "
            f"{config_path} records (changed or damaged since). Export the run again."
        )
    hparams = config["model"]
    cls = MODEL_CLASSES.get(hparams.get("name"))
    if cls is None:
        raise GenlabError(
            f"{config_path} describes a model of type {hparams.get('name')!r}; this genlab "
            f"knows {', '.join(MODEL_CLASSES)}."
        )
    try:  # the values are checked like a config's; keys an older genlab had are left out
        known = set(user_keys(cls.spec_class))
        model = cls(build_spec(cls.spec_class, {k: v for k, v in hparams.items() if k in known}))
        data = DataInfo.from_dict(config["data"])
    except (GenlabError, KeyError, TypeError, ValueError) as err:
        raise GenlabError(
            f"{config_path} does not describe a model genlab can build: {err}"
        ) from None
    weights = _read_weights(weights_path)
    try:
        model._check_weights_fit(weights)
        model.load_state_dict(weights)
    except (GenlabError, RuntimeError) as err:
        raise GenlabError(f"{weights_path} does not fit {config_path}: {err}") from None
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
def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m genlab.export",
        description="Export a trained run to model.safetensors + config.json + README.md, "
        "loadable with genlab.load(folder).",
    )
    parser.add_argument("run", help="a run dir, its checkpoints/ folder or a .ckpt file")
    parser.add_argument("out_dir", help="the folder to write: new, or empty")
    args = parser.parse_args(argv)
    from genlab.cli import fail

    def terminated(signum, frame):  # SIGTERM: remove the temporary folder, as for Ctrl-C
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    try:
        out = export_run(args.run, args.out_dir)
    except GenlabError as err:
        fail(str(err))
    except KeyboardInterrupt as stop:
        by, code = ("SIGTERM", 143) if stop.args == ("SIGTERM",) else ("Ctrl-C", 130)
        fail(f"Export stopped by {by}; nothing was written to {args.out_dir}.", code=code)
    print(out)


if __name__ == "__main__":
    main()
