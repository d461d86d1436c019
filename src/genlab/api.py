"""genlab as a library: `genlab.load(path)` gives a trained model as a `Pipeline`
(genlab.pipeline: the model in eval mode on a device, the uniform methods sample / encode /
decode / reconstruct, and what its images are: `DataInfo`); `genlab.train(overrides)` makes
the run `python train.py <overrides>` makes and returns `Trained(metrics, run_dir)`.

Torch-free at import, like the package: torch, Lightning and Hydra's app machinery are imported
by the calls, so `import genlab` stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from genlab import GenlabError
from genlab.pipeline import Pipeline, data_info


def load(path: str | Path, device="cpu") -> Pipeline:
    """The model of a run dir, a checkpoint (.ckpt) or an export folder (`python -m
    genlab.export`), in eval mode on `device` (a torch.device or cpu, cuda, cuda:N, mps, auto).

    A run is loaded as sample.py loads it (genlab.runs.load_run: the best checkpoint,
    read weights-only); an export from model.safetensors and config.json (nothing unpickled)."""
    from genlab.export import is_export, load_export

    path = Path(path).expanduser()
    if is_export(path):
        return load_export(path, device)
    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_run
    from genlab.sample.options import pick_device

    run = load_run(path, MODEL_CLASSES, pick_device(device) if isinstance(device, str) else device)
    data = data_info(run.cfg.data if run.cfg is not None else None, run.model)
    return Pipeline(run.model, data, source=run.checkpoint, run_dir=run.run_dir)


# -- training --------------------------------------------------------------------------------------
class Trained(NamedTuple):
    """What `genlab.train` returns: `metrics, run_dir = genlab.train([...])`."""

    metrics: dict[str, float]  # metrics.json
    run_dir: Path


_PLAIN_VALUE = re.compile(r"[\w./:-]+")  # written as is; other strings are quoted for Hydra


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_VALUE.fullmatch(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    raise GenlabError(f"cannot pass a {type(value).__name__} as an override value: {value!r}.")


def override_list(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Command-line overrides from a list (kept as is) or a {key: value} dict."""
    if isinstance(overrides, str):
        raise GenlabError("genlab.train takes a list of overrides or a dict, not one string.")
    if isinstance(overrides, Mapping):
        return [f"{k}={_override_value(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def train(overrides: Sequence[str] | Mapping[str, Any] = ()) -> Trained:
    """Run what `python train.py <overrides>` runs (genlab.cli.run_once): the config composed
    and validated once, with the same messages, Hydra's run with its callbacks (the run dir's
    lock, .hydra/ records, train.log), genlab.training.run. Bad input raises GenlabError with
    the message train.py prints; an interruption raises TrainingInterrupted. Sweeps (-m) stay on
    the command line."""
    from hydra.core.global_hydra import GlobalHydra

    from genlab import cli

    args = override_list(overrides)
    if cli.single_run(args) is None:  # what genlab.cli.run_once runs: one run, overrides only
        other = [a for a in args if a.startswith("-") or a.lstrip("+~").startswith("hydra.mode=")]
        raise GenlabError(
            f"genlab.train runs one run and takes overrides only, not {', '.join(other)}: run a "
            "sweep (-m, hydra.mode=MULTIRUN) or Hydra's options (--cfg, --help) with "
            "`python train.py`."
        )
    if GlobalHydra.instance().is_initialized():
        raise GenlabError(
            "genlab.train starts a Hydra app of its own: call it outside @hydra.main and "
            "hydra.initialize(...) blocks."
        )
    done: dict[str, Any] = {}

    def task(cfg) -> dict:
        from genlab.training import run

        cli.redact_hydra_records(cfg)
        done["run_dir"] = Path(cfg.paths.output_dir)
        return run(cfg, validated=True)  # by run_once, where it composed the config

    with cli.raising_errors():
        metrics = cli.run_once(task, args, "train")
    return Trained(metrics=dict(metrics), run_dir=done["run_dir"])
