"""The task table: what each task draws, what it needs of a model, and why it refuses a model
that lacks it.

A task states its needs in terms of the model's capabilities (genlab.models.base.Capabilities),
never of a model's name, and has one handler per family of models: `latent` for models with
an encoder (AE, VAE, CVAE), `diffusion` for diffusion models (DDPM). Whether a model can do a
task, the refusal message, `tasks_for` and the task list of `--help` and the README
(genlab.sample.help) are all computed from these declarations, so a new task is one entry in
TASKS and a new model only has to state its capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.models import hints
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

Handler = Callable[[Job], list[Path]]
Reason = Callable[[Any, str], str]  # (capabilities, model kind) -> why the model cannot
# (options, capabilities, model kind) -> why these options do not fit this model, or None
OptionCheck = Callable[[Any, Any, str], "str | None"]


@dataclass(frozen=True)
class Need:
    """One thing a task needs of a model: `holds(capabilities)`; `why` a model that lacks it is
    refused; `words` names it in the task list. `framed`: the refusal is wrapped in "task=... is
    not available for this <kind>. <why> A <kind> can do: ..."; unframed, `why` names the task
    itself and only "A <kind> can do: ..." follows it."""

    words: str
    holds: Callable[[Any], bool]
    why: Reason
    framed: bool = True


@dataclass(frozen=True)
class Task:
    about: str  # one line of `python sample.py --help`
    detail: str  # the README table's description of the picture
    latent: Handler | None = None  # the handler for models with an encoder
    diffusion: Handler | None = None  # the handler for diffusion models
    needs: tuple[Need, ...] = ()
    default_n: int | None = None  # None: the task does not use n
    draws_every_class: bool = False  # label= does not apply: the task draws each class itself
    checks: tuple[OptionCheck, ...] = ()  # task-specific checks of options against the model

    def handler(self, caps) -> Handler | None:
        """The handler for a model of these capabilities (diffusion first: a diffusion model
        that also had an encoder would still sample by its iterative sampler)."""
        if caps.diffusion:
            return self.diffusion
        return self.latent if caps.encoder else None

    def refusal(self, caps, kind: str) -> tuple[str, bool] | None:
        """(why, framed) when a model of these capabilities cannot do this task, else None;
        why is "" when no declared need explains it (no handler for its family)."""
        for need in self.needs:
            if not need.holds(caps):
                return need.why(caps, kind), need.framed
        return None if self.handler(caps) is not None else ("", True)


def _always(text: str) -> Reason:
    return lambda caps, kind: text


# -- the needs and their refusals ----------------------------------------------------------------
# Each refusal says why, then the way to get the asked thing (genlab.models.hints: computed from
# the specs, so it names only keys the named model accepts); sample.py adds what the model can do.
def _a(kind: str) -> str:
    name = kind.upper()
    return f"{'An' if name[0] in 'AEIOU' else 'A'} {name}"


def _not_generative(caps, kind: str) -> str:
    if caps.encoder:  # an autoencoder without a prior: the AE's and the VQ-VAE's case
        why = (
            f"{_a(kind)} is not a generative model: it has no prior over its latent space, "
            "the codes of the data leave gaps in it, and random codes decode to images nothing "
            "like the data."
        )
    else:
        why = f"{_a(kind)} is not a generative model."
    return f"{why} {hints.generative(kind)}"


GENERATIVE = Need("a generative model", lambda caps: caps.generative, _not_generative)


def _encoder(diffusion_why: str) -> Need:
    """An encoder: `diffusion_why` says why a diffusion model has no use for the task."""

    def why(caps, kind: str) -> str:
        if caps.diffusion:  # its latent x_T is noise reached by noising, not inferred
            return (
                f"{_a(kind)} has no encoder: its latent x_T is Gaussian noise, reached by "
                f"the fixed forward noising process, not inferred from an image. {diffusion_why} "
                + hints.encoder(kind)
            )
        return f"{_a(kind)} has no encoder: it infers no latent codes of images. " + hints.encoder(
            kind
        )

    return Need("an encoder", lambda caps: caps.encoder, why)


def _latent_plane_2d(caps, kind: str) -> str:
    return (
        f"task=manifold draws the latent plane of a 2-d latent, but this {kind} has "
        f"latent_dim={caps.latent_dim}. Use task=traverse to vary one latent dim at a time, or "
        + hints.latent_dim(kind, 2)
    )


LATENT_2D = Need("latent_dim=2", lambda caps: caps.latent_dim == 2, _latent_plane_2d, False)


def _unconditional(caps, kind: str) -> str:
    return (
        f"This {kind.upper()} is unconditional: it was trained without labels, so it cannot be "
        f"asked for a class. {hints.conditional(kind)}"
    )


CONDITIONAL = Need("a class-conditional model", lambda caps: caps.conditional, _unconditional)

DIFFUSION = Need(
    "a diffusion model",
    lambda caps: caps.diffusion,
    _always(
        "task=denoise shows the noising and denoising processes of a diffusion model: "
        "train one with `python train.py model=ddpm`."
    ),
)


def _slerp_needs_a_gaussian_latent(opts, caps, kind: str) -> str | None:
    if opts.mode != "slerp" or caps.diffusion or caps.gaussian_latent:
        return None  # a diffusion model's x_T is Gaussian noise: slerp is its default
    return (
        "mode=slerp follows great circles of a Gaussian latent (a VAE's or CVAE's prior); "
        f"{kind.upper()} codes have no such distribution, so slerp means nothing there: use "
        "mode=linear."
    )


# -- the table -----------------------------------------------------------------------------------
TASKS: dict[str, Task] = {
    "samples": Task(
        "n x n images from the prior (DDPM: from noise); by class: n rows, a class per column",
        "n x n images decoded from z ~ N(0, I); DDPM: sampled from x_T ~ N(0, I) with "
        "`sampler=`, `steps=`, `eta=`, `guidance_scale=`; conditional models: n rows of one "
        "class per column (as the run's samples.png), or n x n of `label=`",
        latent=prior_samples,
        diffusion=diffusion_samples,
        needs=(GENERATIVE,),
        default_n=8,
    ),
    "reconstructions": Task(
        "n rows of n test images above their reconstructions",
        "n rows of n test images, each above its reconstruction",
        latent=reconstructions,
        needs=(_encoder("task=denoise shows that forward process on test images."),),
        default_n=8,
    ),
    "interpolate": Task(
        "n pairs of test images (DDPM: of x_T draws), `frames` images each",
        "n pairs of test images, `frames` decodes (default 10) along `mode=linear\\|slerp` "
        "(slerp: Gaussian latents, vae and cvae); CVAE rows stay in the first image's class. "
        "DDPM: n pairs of independent x_T draws, `frames` points on the slerp (default) or line "
        "between them, each mapped to an image by a deterministic sampler (DDIM with eta 0 unless "
        "`sampler=dpmpp_2m`; `steps=` steps, default the model's `sample_steps`)",
        latent=interpolate,
        diffusion=diffusion_interpolate,
        default_n=8,
        checks=(_slerp_needs_a_gaussian_latent,),
    ),
    "manifold": Task(
        "the decoded latent plane of a 2-d latent, n x n",
        "the decoded latent plane of a 2-d latent, n x n, z1 to the right, z2 up; Gaussian "
        "latents: N(0, 1) quantiles 5%..95%, AE: the range of the test codes",
        latent=manifold,
        needs=(
            _encoder("It has no low-dimensional latent plane to draw."),
            LATENT_2D,
        ),
        default_n=12,
    ),
    "traverse": Task(
        "one row per latent dim (at most 16), n values from -r to r",
        "one row per latent dim, that dim moved over -3..3 (`traverse_range`) around a test "
        "image's code; above 16 dims the 16 the test codes vary most along (printed)",
        latent=traverse,
        needs=(
            _encoder(
                "Its latent dims are cells of noise, with no meaning to vary one at a time; "
                "task=interpolate walks between noise draws instead."
            ),
        ),
        default_n=9,
    ),
    "latent_scatter": Task(
        "test latent means in 2-d by class (PCA when k > 2)",
        "test latent means coloured by class (PCA axes when k > 2)",
        latent=latent_scatter,
        needs=(_encoder("There are no latent means of test images to plot."),),
    ),
    "classes": Task(
        "one column of n samples per class",
        "one column of n samples per class, each row one z (DDPM: one x_T)",
        latent=class_rows,
        diffusion=diffusion_class_rows,
        needs=(CONDITIONAL,),
        default_n=8,
        draws_every_class=True,
    ),
    "anomaly": Task(
        "reconstruction-error histograms and AUROC vs anomaly_data",
        "histograms of reconstruction error −log p(x\\|z) on the test set vs `anomaly_data` "
        "(same image shape; default: mnist ↔ fashion_mnist), AUROC in `anomaly-<data>.json`",
        latent=anomaly,
        needs=(
            _encoder(
                "It has no reconstruction error to score test images with; its likelihood "
                "bound on the test set (test/bpd, bits per dim) is in the run's metrics.json."
            ),
        ),
    ),
    "denoise": Task(
        "reverse (x_T to sample) and forward (test image to noise) strips, n rows each",
        "the diffusion strips, one row per image: `denoise_reverse.png`, n samples as x_t at "
        "`strip_steps` (10) evenly spaced timesteps the sampler visits, from x_T, then the final "
        "sample; `denoise_forward.png`, n test images x_0, then x_t ~ q(x_t\\|x_0) at 10 evenly "
        "spaced t up to T−1 (nearly pure noise). The timesteps are printed",
        diffusion=denoise,
        needs=(DIFFUSION,),
        default_n=4,
    ),
}
