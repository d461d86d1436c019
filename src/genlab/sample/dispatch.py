"""From options to files: `run(cfg)` checks the options, loads the run, refuses (before any work)
what the model cannot do, and hands the task to the handler of the model's family.

What a model can do is computed from the task declarations (genlab.sample.tasks) and the model's
capabilities; the model's name only appears in messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab import GenlabError
from genlab.models import hints
from genlab.rundir import check_inside
from genlab.runs import LoadedRun, load_run
from genlab.sample.job import Job
from genlab.sample.latent import TRAVERSE_ROWS
from genlab.sample.options import check_label, check_options, options, pick_device
from genlab.sample.tasks import TASKS

# Options that only steer a diffusion sampler; refused for other models rather than ignored.
SAMPLER_OPTIONS = ("sampler", "steps", "eta", "guidance_scale")


def tasks_for(model: Any) -> list[str]:
    """The tasks this model can do (a model, or its Capabilities), in the order of TASKS."""
    caps = getattr(model, "capabilities", model)
    kind = getattr(model, "kind", "model")
    return [name for name, task in TASKS.items() if task.refusal(caps, kind) is None]


def check_supported(task_name: str, run: LoadedRun, opts: DictConfig) -> None:
    """Refuse, before any work, what this model cannot do or options that do not apply to it."""
    task, model, kind = TASKS[task_name], run.model, run.name
    caps = model.capabilities
    refused = task.refusal(caps, kind)
    if refused is not None:
        why, framed = refused
        why = why.replace(hints.THIS_RUN, str(run.home))
        can_do = f"A {kind} can do: task={', '.join(tasks_for(model))}."
        if not framed:  # the reason names the task itself
            raise GenlabError(f"{why} {can_do}")
        raise GenlabError(
            f"task={task_name} is not available for this {kind} ({run.checkpoint}). "
            + (f"{why} " if why else "")
            + can_do
        )
    for check in task.checks:
        why = check(opts, caps, kind)
        if why is not None:
            raise GenlabError(why)
    if opts.label is not None and task.draws_every_class:
        raise GenlabError(
            f"label={opts.label}: task={task_name} draws every class (one row each), so label= "
            "has nothing to pick: drop it, or use task=samples label=<class> for one class."
        )
    if opts.label is not None:
        if not caps.conditional:
            raise GenlabError(
                f"label={opts.label} picks a class, but this {kind.upper()} is unconditional: drop "
                f"label=. {hints.conditional(kind)}"
            )
        check_label(opts.label, model.num_classes)
    if not caps.diffusion:
        given = [f"{k}={opts[k]}" for k in SAMPLER_OPTIONS if opts[k] is not None]
        if given:
            frames = " (interpolate's images per row are frames=)" if opts.steps is not None else ""
            raise GenlabError(
                f"{', '.join(given)} steer a diffusion sampler, but this {kind} decodes latent "
                f"codes and has none: drop them (they apply to model=ddpm runs){frames}."
            )
        return
    # A diffusion model's sampler options are checked against it by the task's first step,
    # DDPM.sampler_plan (genlab.sampler_rules), before anything is drawn.


# The option that sets the length of a task's rows, where the user chooses it.
ROW_OPTION = {"interpolate": "frames", "denoise": "strip_steps"}


def images_per_row(task_name: str, opts: DictConfig, model: Any, n: int) -> int:
    """How many images one of a task's n rows holds (at least): n x n grids, or a row of frames,
    latent dims, classes or strip steps."""
    return {
        "samples": max(n, getattr(model, "num_classes", 0) or 0),  # a class per column
        "reconstructions": 2 * n,
        "manifold": n,
        "interpolate": opts.frames,
        "traverse": min(getattr(model, "latent_dim", 1), TRAVERSE_ROWS),
        "classes": getattr(model, "num_classes", 1),
        "denoise": 2 * opts.strip_steps,
    }.get(task_name, 1)


def check_size(task_name: str, run: LoadedRun, opts: DictConfig, n: int | None) -> None:
    """Refuse an `n` whose pictures cannot fit in memory, before any image is drawn."""
    from genlab.resources import refuse_if_too_big

    if n is None:
        return
    count = n * images_per_row(task_name, opts, run.model, n)
    channels, height, width = run.image_shape
    key, fix = f"n={n}", f"Use a smaller n (the task's default is {TASKS[task_name].default_n})."
    row = ROW_OPTION.get(task_name)
    if row and opts[row] >= n:  # the longer side of the picture is the row the user asked for
        key, fix = f"{row}={opts[row]} (with n={n})", f"Use a smaller {row}."
    refuse_if_too_big(
        4.0 * count * channels * height * width,  # float32 images, before the grid is made
        f"task={task_name} draws {count:,} images of {channels}x{height}x{width}, which",
        key,
        fix,
    )


def run(cfg: DictConfig | Mapping) -> list[Path]:
    """Do `cfg.task` for the run at `cfg.run`; return the files written."""
    cfg = options(cfg)
    check_options(cfg, TASKS)
    from genlab.models import MODEL_CLASSES

    loaded = load_run(str(cfg.run), MODEL_CLASSES, pick_device(cfg.device))
    check_supported(cfg.task, loaded, cfg)
    task = TASKS[cfg.task]
    out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else loaded.home / "samples"
    if not cfg.out_dir:  # the run's own folder: not one its dir links to elsewhere
        check_inside(loaded.home, out_dir)
    n = None if task.default_n is None else (cfg.n or task.default_n)
    check_size(cfg.task, loaded, cfg, n)
    handler = task.handler(loaded.model.capabilities)
    return handler(Job(run=loaded, opts=cfg, n=n, out_dir=out_dir))
