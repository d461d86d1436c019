"""The task table: what each task does, which models it serves and why it refuses the others,
and the checks of a task's options against the loaded model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from genlab import GenlabError
from genlab.sample.anomaly import anomaly
from genlab.sample.diffusion import (
    denoise,
    diffusion_class_rows,
    diffusion_interpolate,
    diffusion_samples,
)
from genlab.sample.job import Job
from genlab.sample.latent import (
    class_rows,
    interpolate,
    latent_scatter,
    manifold,
    prior_samples,
    reconstructions,
    traverse,
)
from genlab.sample.loader import LoadedRun
from genlab.sample.options import _invalid

AE_NOT_GENERATIVE = (
    "An AE is not a generative model: it has no prior over its latent space, the codes of the "
    "data leave gaps in it, and random codes decode to images nothing like the data (seed "
    "001, lecture 004). Train a VAE to sample: `python train.py model=vae`."
)

# Why a DDPM refuses the latent-code tasks: its latent x_T is noise with the image's own shape,
# reached by the fixed forward (noising) process, not inferred by an encoder.
DDPM_NO_ENCODER = (
    "A DDPM has no encoder: its latent x_T is noise of the image's own shape, reached by the "
    "fixed forward noising process, not inferred from an image."
)
DDPM_REFUSALS = {
    "reconstructions": f"{DDPM_NO_ENCODER} task=denoise shows that forward process on test images.",
    "manifold": f"{DDPM_NO_ENCODER} It has no low-dimensional latent plane to draw.",
    "traverse": f"{DDPM_NO_ENCODER} Its latent dims are pixels of noise, with no meaning to vary "
    "one at a time; task=interpolate walks between noise draws instead.",
    "latent_scatter": f"{DDPM_NO_ENCODER} There are no latent means of test images to plot.",
    "anomaly": "A DDPM has no reconstruction error to score test images with; its likelihood bound "
    "on the test set (test/bpd, bits per dim) is in the run's metrics.json.",
}


# -- the dispatch table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    about: str
    handlers: Mapping[str, Callable[[Job], list[Path]]]  # model type -> function
    default_n: int | None = None  # None: the task does not use n
    refusals: Mapping[str, str] = field(default_factory=dict)  # model type -> why not
    # model type -> check(model) -> why this particular model cannot (None: it can), for
    # refusals that depend on how a model was trained rather than on its type.
    limits: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)

    def refusal(self, name: str, model: Any) -> str | None:
        """Why a `name` model cannot do this task ("" when no reason is recorded), or None."""
        if name not in self.handlers:
            return self.refusals.get(name, "")
        limit = self.limits.get(name)
        return limit(model) if limit is not None and model is not None else None


_ALL = ("ae", "vae", "cvae")


def _needs_conditional_ddpm(model) -> str | None:
    if model.conditional:
        return None
    return (
        "This DDPM is unconditional: it was trained without labels, so it cannot be asked for a "
        "class. Train a class-conditional one with `python train.py model=ddpm "
        "model.conditional=true`."
    )


TASKS: dict[str, Task] = {
    "samples": Task(
        "n x n images from the prior (DDPM: from noise, sampler=ddpm|ddim, steps=)",
        {"vae": prior_samples, "cvae": prior_samples, "ddpm": diffusion_samples},
        default_n=8,
        refusals={"ae": AE_NOT_GENERATIVE},
    ),
    "reconstructions": Task(
        "n rows of n test images above their reconstructions",
        dict.fromkeys(_ALL, reconstructions),
        default_n=8,
        refusals={"ddpm": DDPM_REFUSALS["reconstructions"]},
    ),
    "interpolate": Task(
        "n pairs of test images (DDPM: of x_T draws), `steps` interpolants each",
        {**dict.fromkeys(_ALL, interpolate), "ddpm": diffusion_interpolate},
        default_n=8,
    ),
    "manifold": Task(
        "the decoded latent plane of a 2-d latent, n x n",
        dict.fromkeys(_ALL, manifold),
        12,
        refusals={"ddpm": DDPM_REFUSALS["manifold"]},
    ),
    "traverse": Task(
        "one row per latent dim, n values from -r to r",
        dict.fromkeys(_ALL, traverse),
        9,
        refusals={"ddpm": DDPM_REFUSALS["traverse"]},
    ),
    "latent_scatter": Task(
        "test latent means in 2-d by class (PCA when k > 2)",
        dict.fromkeys(_ALL, latent_scatter),
        refusals={"ddpm": DDPM_REFUSALS["latent_scatter"]},
    ),
    "classes": Task(
        "one row of n samples per class",
        {"cvae": class_rows, "ddpm": diffusion_class_rows},
        default_n=8,
        refusals={
            "ae": "Only a class-conditional model draws a chosen class: train model=cvae "
            "(or model=ddpm model.conditional=true).",
            "vae": "A VAE cannot be asked for a class: train model=cvae "
            "(or model=ddpm model.conditional=true).",
        },
        limits={"ddpm": _needs_conditional_ddpm},
    ),
    "anomaly": Task(
        "reconstruction-error histograms and AUROC vs anomaly_data",
        dict.fromkeys(_ALL, anomaly),
        refusals={"ddpm": DDPM_REFUSALS["anomaly"]},
    ),
    "denoise": Task(
        "the reverse (x_T to sample) and forward (test image to noise) strips, n rows each",
        {"ddpm": denoise},
        default_n=4,
        refusals=dict.fromkeys(
            _ALL,
            "task=denoise shows the noising and denoising processes of a diffusion model: "
            "train one with `python train.py model=ddpm`.",
        ),
    ),
}

# Options that only steer a diffusion sampler; refused for other models rather than ignored.
DDPM_OPTIONS = ("sampler", "eta", "guidance_scale")
# Tasks whose `steps=` is the sampler's step count for a DDPM (interpolate: images per row).
SAMPLER_STEPS_TASKS = ("samples", "classes", "denoise")


def tasks_for(model_type: str, model: Any = None) -> list[str]:
    """The tasks a model of this type can do (given `model`: this model in particular)."""
    return [name for name, task in TASKS.items() if task.refusal(model_type, model) is None]


def _check_supported(task_name: str, run: LoadedRun, opts: DictConfig) -> None:
    """Refuse, before any work, what this model cannot do or options that do not apply to it."""
    task = TASKS[task_name]
    why = task.refusal(run.name, run.model)
    if why is not None:
        can = ", ".join(tasks_for(run.name, run.model))
        raise GenlabError(
            f"task={task_name} is not available for this {run.name} ({run.checkpoint}). "
            + (f"{why} " if why else "")
            + f"A {run.name} can do: task={can}."
        )
    if task_name == "interpolate" and opts.mode == "slerp" and run.name == "ae":
        raise GenlabError(
            "mode=slerp follows great circles of a Gaussian latent (a VAE's or CVAE's prior); an "
            "AE's codes have no such distribution, so slerp means nothing there: use mode=linear."
        )
    if run.name != "ddpm":
        given = [f"{k}={opts[k]}" for k in DDPM_OPTIONS if opts[k] is not None]
        if given:
            raise GenlabError(
                f"{', '.join(given)} steer a diffusion sampler, but this {run.name} decodes "
                "latent codes and has none: drop them (they apply to model=ddpm runs)."
            )
        return
    model = run.model
    T = model.schedule.timesteps
    if task_name in SAMPLER_STEPS_TASKS and opts.steps is not None and opts.steps > T:
        raise _invalid("steps", opts.steps, f"an integer between 1 and this DDPM's T={T}")
    if opts.guidance_scale and not model.conditional:
        raise GenlabError(
            f"guidance_scale={opts.guidance_scale} needs a class-conditional DDPM (classifier-free "
            "guidance mixes its predictions with and without the label), but this one is "
            "unconditional: drop guidance_scale=, or train with model.conditional=true."
        )
    if opts.label is not None and task_name != "classes":
        if not model.conditional:
            raise GenlabError(
                f"label={opts.label} picks a class, but this DDPM is unconditional: drop label=, "
                "or train with model.conditional=true."
            )
        if opts.label >= model.num_classes:
            raise _invalid("label", opts.label, f"a class index in 0..{model.num_classes - 1}")
