"""The one sampling loop: drives any :class:`~genlab.diffusion.samplers.Sampler`.

The loop owns what every sampler shares: the starting noise ``x_T`` (drawn, or given), the
trajectory (``{t: x_t}`` at requested steps), classifier-free guidance, the progress bar and
stop requests between steps (:func:`genlab.interrupt.poll`). The sampler only says which steps
it visits and how to take one.

The network is ``net(x_t, t_batch, y)``, where ``t_batch`` is an int64 tensor of shape ``(B,)``
of code timesteps and ``y`` the labels (or ``None``); its output is the ``eps``/``x0``/``v``
prediction the sampler was built for.

The loop runs under ``torch.inference_mode()``: its outputs cannot enter autograd. It does not
touch the network's mode, so call ``net.eval()`` first (dropout). Randomness comes only from
``generator`` (which must live on ``device``), so a seeded generator gives the same samples on
every run. A given ``x_T`` sets the dtype and device; otherwise ``dtype``/``device`` do.

Trajectories ("denoising strips"): ``return_trajectory_at`` lists code timesteps ``t``; the loop
then also returns ``{t: x_t}``, where ``x_t`` is the latent fed to the network at step ``t`` (so
``T - 1`` is the starting noise). The final clean sample has no timestep and is the main return
value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from genlab import interrupt
from genlab.diffusion.samplers import Sampler, make_sampler
from genlab.diffusion.schedule import DiffusionSchedule

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
SampleResult = torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]


def guided(
    net: Net,
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    guidance_scale: float = 0.0,
) -> DenoiseFn:
    """``net`` with labels and classifier-free guidance (Ho & Salimans 2022) folded in.

    Without labels the network is called with ``y=None`` and there is nothing to guide. With
    ``guidance_scale = w`` the output is ``eps(x, y) + w * (eps(x, y) - eps(x, null))``, both
    terms from one batched call of twice the batch.
    """
    if labels is None:
        return lambda x_t, t: net(x_t, t, None)
    if not guidance_scale:
        return lambda x_t, t: net(x_t, t, labels)
    if null_label is None:
        raise ValueError("classifier-free guidance needs the null label the model was trained with")
    null = torch.full_like(labels, null_label)

    def denoise(x_t, t):
        both = net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return cond + guidance_scale * (cond - uncond)

    return denoise


def _progress(steps: Sequence, enabled: bool, desc: str) -> Iterable:
    """The sampler's steps, with a progress bar if asked, honouring stop requests between
    steps (genlab.interrupt: a SIGTERM while a run evaluates)."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # progress bars are a nicety, never a hard dependency
            pass
        else:
            steps = tqdm(steps, desc=desc, leave=False)
    for step in steps:
        interrupt.poll()
        yield step


def _initial_noise(
    shape: Sequence[int] | None,
    x_T: torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T.shape {tuple(x_T.shape)}")
        return x_T.clone()
    if shape is None:
        raise ValueError("pass either shape or x_T")
    if device is None and generator is not None:
        device = generator.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _trajectory_request(
    return_trajectory_at: Iterable[int] | None, visited: Sequence[int], hint: str
) -> set[int] | None:
    if return_trajectory_at is None:
        return None
    wanted = {int(t) for t in return_trajectory_at}
    missing = sorted(wanted - set(visited))
    if missing:
        raise ValueError(
            f"return_trajectory_at has steps {missing} that the sampler never visits; {hint}"
        )
    return wanted


@torch.inference_mode()
def sample_loop(
    sampler: Sampler,
    net: Net,
    shape: Sequence[int] | None,
    *,
    labels: torch.Tensor | None = None,
    null_label: int | None = None,
    guidance_scale: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    return_trajectory_at: Iterable[int] | None = None,
    progress: bool = False,
) -> SampleResult:
    """Run ``sampler`` from ``x_T ~ N(0, I)`` of ``shape`` (or the given ``x_T``) to clean data.

    Costs one network call per visited step (two batches' worth with guidance). Returns the
    samples, or ``(samples, {t: x_t})`` when ``return_trajectory_at`` is given.
    """
    seq = sampler.timesteps()
    wanted = _trajectory_request(return_trajectory_at, seq, sampler.visit_hint())
    denoise = guided(net, labels, null_label, guidance_scale)
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory: dict[int, torch.Tensor] = {}

    pairs = list(zip(seq, [*seq[1:], -1], strict=True))  # (t, t_prev); -1 is clean data
    for t, t_prev in _progress(pairs, progress, sampler.name):
        if wanted is not None and t in wanted:
            trajectory[t] = x.clone()
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x = sampler.step(denoise(x, t_batch), t, t_prev, x, generator=generator).prev_sample
    return x if wanted is None else (x, trajectory)


# -- the function API of the two built-in samplers, for callers that pass a denoise_fn --------
# A denoise_fn(x_t, t_batch) has labels and guidance folded in already, so of the loop's options
# these are the ones left to pass.
_UNLABELLED_OPTIONS = frozenset(
    {"generator", "device", "dtype", "x_T", "return_trajectory_at", "progress"}
)


def _run_unlabelled(sampler: Sampler, denoise_fn: DenoiseFn, shape, options: dict) -> SampleResult:
    unknown = sorted(set(options) - _UNLABELLED_OPTIONS)
    if unknown:
        raise TypeError(
            f"unexpected option(s) {unknown}; choose from {sorted(_UNLABELLED_OPTIONS)}"
        )
    return sample_loop(sampler, lambda x_t, t, _y: denoise_fn(x_t, t), shape, **options)


def ddpm_sample(
    denoise_fn: DenoiseFn,
    shape: Sequence[int] | None,
    schedule: DiffusionSchedule,
    *,
    prediction: str = "eps",
    variance: str = "beta",
    clip_x0: bool = True,
    **options,
) -> SampleResult:
    """Ancestral sampling (:class:`~genlab.diffusion.samplers.AncestralSampler`), ``T`` calls of
    ``denoise_fn(x_t, t_batch)``. ``options``: :func:`sample_loop`'s generator, device, dtype,
    x_T, return_trajectory_at, progress. Returns the samples, or ``(samples, {t: x_t})``."""
    T = schedule.timesteps
    sampler = make_sampler(
        "ddpm", schedule, T, prediction=prediction, clip_x0=clip_x0, variance=variance
    )
    return _run_unlabelled(sampler, denoise_fn, shape, options)


def ddim_sample(
    denoise_fn: DenoiseFn,
    shape: Sequence[int] | None,
    schedule: DiffusionSchedule,
    *,
    steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = True,
    **options,
) -> SampleResult:
    """DDIM (:class:`~genlab.diffusion.samplers.DDIMSampler`), ``steps`` calls of
    ``denoise_fn(x_t, t_batch)``; ``options`` as for :func:`ddpm_sample`."""
    sampler = make_sampler("ddim", schedule, steps, prediction=prediction, clip_x0=clip_x0, eta=eta)
    return _run_unlabelled(sampler, denoise_fn, shape, options)
