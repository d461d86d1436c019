"""The tasks of a diffusion model (capabilities.diffusion: DDPM): samples, classes,
interpolate, denoise. `steps=` is the sampler's step count in every one of them.

A DDPM's "latent" is the starting noise x_T, of the image's shape. Every task draws it from one
seeded generator and then lets the sampler continue with that generator, so a picture depends
only on seed (and, for the stochastic samplers, on batch_size: each chunk draws its own step
noise in turn)."""

from __future__ import annotations

from pathlib import Path

from genlab.sample.job import Job, slerp
from genlab.sampler_rules import SamplerPlan


def _sampler_plan(job: Job, deterministic: bool = False) -> SamplerPlan:
    """sampler/steps/eta/guidance_scale resolved against the model's own settings and limits
    (DDPM.sampler_plan: the rule genlab.load and the test stage follow too). `deterministic`:
    the task needs the same x_T to give the same image (interpolate)."""
    opts = job.opts
    return job.model.sampler_plan(
        opts.sampler,
        opts.steps,
        opts.eta,
        opts.guidance_scale,
        deterministic_for=opts.task if deterministic else None,
    )


def _visited(plan: SamplerPlan, schedule) -> list[int]:
    """The code timesteps the plan's sampler feeds the network, in sampling order (the
    sampler's own answer, genlab.diffusion.samplers)."""
    from genlab.diffusion import make_sampler

    return list(make_sampler(plan.sampler, schedule, plan.steps).timesteps())


def _noise(job: Job, count: int, generator, shape=None):
    """count draws of x_T (of the model's noise shape: the image's, or a latent DDPM's latent),
    or of `shape`."""
    import torch

    shape = (count, *(job.model.noise_shape if shape is None else shape))
    return torch.randn(shape, generator=generator, device=job.device)


def _diffuse(job: Job, x_T, labels, plan: SamplerPlan, generator, trajectory_at=None):
    """Images in [0, 1] on the CPU sampled from the given x_T, batch by batch; with
    `trajectory_at`, also {t: x_t in [0, 1]} for those visited timesteps."""
    import sys

    import torch

    images, frames = [], {}
    for a, b in job.chunks(len(x_T), "sampling"):
        out = job.model.sample(
            len(x_T[a:b]),
            labels=None if labels is None else labels[a:b],
            generator=generator,
            **plan.options(),
            x_T=x_T[a:b],
            return_trajectory_at=trajectory_at,
            progress=sys.stderr.isatty(),  # a step bar on a terminal, silence in logs and tests
        )
        if trajectory_at is not None:
            out, trajectory = out
            for t, x_t in trajectory.items():
                frames.setdefault(t, []).append(x_t.cpu())
        images.append(out.cpu())
    images = torch.cat(images)
    if trajectory_at is None:
        return images
    return images, {t: torch.cat(parts) for t, parts in frames.items()}


def diffusion_samples(job: Job) -> list[Path]:
    """n x n samples. Conditional DDPM: n rows, one class per column (job.sample_grid), or
    n x n of `label=`."""
    count, columns = job.sample_grid()
    plan = _sampler_plan(job)
    generator = job.generator()
    x_T = _noise(job, count, generator)
    images = _diffuse(job, x_T, job.labels_for(count), plan, generator)
    print(f"samples: {plan.describe()}")
    return job.save_grid(images, nrow=columns)


def diffusion_class_rows(job: Job) -> list[Path]:
    """One column per class (as in every class-chosen grid), n samples each; row i starts from
    the same x_T in every column, so a row shows what one noise draw becomes in each class."""
    import torch

    n, classes = job.n, job.model.num_classes
    plan = _sampler_plan(job)
    generator = job.generator()
    x_T = _noise(job, n, generator).repeat_interleave(classes, 0)
    labels = torch.arange(classes, device=job.device).repeat(n)
    images = _diffuse(job, x_T, labels, plan, generator)
    print(f"classes: {plan.describe()}")
    return job.save_grid(images, nrow=classes)


def diffusion_interpolate(job: Job) -> list[Path]:
    """Rows: n pairs of independent x_T draws (the seeded draw of 2n noise images, split into
    even and odd); columns: `frames` points on the path between them (slerp unless
    mode=linear), each mapped to an image by a deterministic sampler (DDIM with eta=0 unless
    sampler= or model.sampler names another deterministic one; `steps` steps, else the model's
    sample_steps), so the ends are exactly that sampler's samples of the two draws.
    Conditional: one class per row."""
    import torch

    n, cols = job.n, int(job.opts.frames)
    plan = _sampler_plan(job, deterministic=True)
    generator = job.generator()
    ends = _noise(job, 2 * n, generator).flatten(1)
    a, b = ends[0::2].unsqueeze(1), ends[1::2].unsqueeze(1)
    t = torch.linspace(0, 1, cols, device=job.device).view(1, cols, 1)
    # Slerp by default: two draws of N(0, I) in D dims have norm ~sqrt(D) and are nearly
    # orthogonal, so the straight line between them dips to norm ~sqrt(D/2) midway, noise the
    # model never saw at t = T; the great circle keeps the typical norm.
    path = (1 - t) * a + t * b if job.opts.mode == "linear" else slerp(a, b, t)
    path[:, 0], path[:, -1] = a[:, 0], b[:, 0]  # the exact draws, free of slerp's rounding
    x_T = path.reshape(n * cols, *job.model.noise_shape)
    images = _diffuse(job, x_T, job.labels_for(n, per=cols), plan, generator)
    print(f"interpolate: {plan.describe()}")
    return job.save_grid(images, nrow=cols)


def _evenly_spaced(timesteps: list[int], count: int) -> list[int]:
    """`count` of `timesteps` evenly spaced by position, always with the largest and smallest,
    in descending order (the order the reverse process visits them)."""
    from genlab.diffusion import ddim_timesteps

    ascending = sorted(timesteps)
    picks = ddim_timesteps(len(ascending), min(count, len(ascending)))
    return [ascending[i] for i in picks]


def denoise(job: Job) -> list[Path]:
    """The two diffusion strips, one row per image. `_reverse`: n samples, x_t at `strip_steps`
    evenly spaced timesteps the sampler visits (from x_T), then the final sample.
    `_forward`: n test images x_0, then x_t ~ q(x_t | x_0) at `strip_steps` evenly spaced
    timesteps up to T - 1, where little of the image is left."""
    from genlab.viz.grids import rows_of_columns

    n, model, k = job.n, job.model, int(job.opts.strip_steps)
    T = model.schedule.timesteps
    plan = _sampler_plan(job)
    shown = _evenly_spaced(_visited(plan, model.schedule), k)
    noised = _evenly_spaced(list(range(T)), k)[::-1]  # ascending: the forward direction
    x0, _ = job.test_images(n)
    generator = job.generator()
    x_T = _noise(job, n, generator)
    forward_noise = _noise(job, n * len(noised), generator, x0.shape[1:])
    forward_noise = forward_noise.view(len(noised), n, *x0.shape[1:])
    images, frames = _diffuse(job, x_T, job.labels_for(n), plan, generator, shown)
    reverse = rows_of_columns([frames[t] for t in shown] + [images])

    columns = [x0.cpu()]
    for t, noise in zip(noised, forward_noise, strict=True):
        x_t = model.schedule.q_sample(x0 * 2 - 1, t, noise)
        columns.append(((x_t + 1) / 2).cpu())
    forward = rows_of_columns(columns)
    print(
        f"denoise: reverse ({plan.describe()}): x_t at t = {', '.join(map(str, shown))}, then "
        f"the sample; forward: x_0, then x_t at t = {', '.join(map(str, noised))} "
        f"(code timesteps 0..{T - 1}; t = {T - 1} is x_T)"
    )
    return job.save_grids(
        {"_reverse.png": (reverse, len(shown) + 1), "_forward.png": (forward, len(noised) + 1)}
    )
