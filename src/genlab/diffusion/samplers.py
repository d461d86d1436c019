"""Ancestral DDPM and DDIM samplers as pure functions.

The network is passed in as ``denoise_fn(x_t, t_batch) -> model_output``, where ``t_batch`` is
an int64 tensor of shape ``(B,)`` of code timesteps (0-indexed, see
:mod:`genlab.diffusion.schedule`) and ``model_output`` is the ``eps``/``x0``/``v`` prediction
named by ``prediction``. Wrap class labels or classifier-free guidance into that callable, e.g.
``lambda x, t: unet(x, t, y)``.

Both samplers run under ``torch.inference_mode()``: their outputs cannot enter autograd. They do
not touch the network's mode, so call ``net.eval()`` first (dropout). Randomness comes only from
``generator`` (which must live on ``device``), so a seeded generator gives the same samples on
every run. A given ``x_T`` sets the dtype and device; otherwise ``dtype``/``device`` do.

Trajectories ("denoising strips"): ``return_trajectory_at`` lists code timesteps ``t``; the
sampler then also returns ``{t: x_t}``, where ``x_t`` is the latent fed to the network at step
``t`` (so ``T - 1`` is the starting noise). The final clean sample has no timestep and is the
main return value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from genlab import interrupt
from genlab.diffusion.schedule import PREDICTIONS, DiffusionSchedule, _check_choice

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SampleResult = torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]


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


# --------------------------------------------------------------------------------------
# DDPM (Ho et al. 2020, Algorithm 2)
# --------------------------------------------------------------------------------------


@torch.inference_mode()
def ddpm_sample(
    denoise_fn: DenoiseFn,
    shape: Sequence[int] | None,
    schedule: DiffusionSchedule,
    *,
    prediction: str = "eps",
    variance: str = "beta",
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    return_trajectory_at: Iterable[int] | None = None,
    progress: bool = False,
) -> SampleResult:
    """Ancestral sampling, ``T`` network calls: ``x_{t-1} = mu_theta(x_t, t) + sigma_t z``.

    Starts from ``x_T ~ N(0, I)`` of ``shape`` (or the given ``x_T``) and adds no noise at the
    last step, so the result is the mean of ``p_theta(x0 | x_1)``; with ``clip_x0`` that mean is
    the clipped ``x0`` prediction and thus lies in ``[-1, 1]``. ``variance`` is ``"beta"`` or
    ``"beta_tilde"`` (see :meth:`DiffusionSchedule.p_mean_variance`).

    Returns the samples, or ``(samples, {t: x_t})`` when ``return_trajectory_at`` is given.
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    T = schedule.timesteps
    wanted = _trajectory_request(
        return_trajectory_at, range(T), f"DDPM visits every step 0..{T - 1}"
    )
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory: dict[int, torch.Tensor] = {}

    for t in _progress(range(T - 1, -1, -1), progress, "ddpm"):
        if wanted is not None and t in wanted:
            trajectory[t] = x.clone()
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = denoise_fn(x, t_batch)
        mean, _, log_var, _ = schedule.p_mean_variance(
            out, x, t, prediction=prediction, variance=variance, clip_x0=clip_x0
        )
        if t > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + (0.5 * log_var).exp() * noise
        else:
            x = mean
    return x if wanted is None else (x, trajectory)


# --------------------------------------------------------------------------------------
# DDIM (Song et al. 2021)
# --------------------------------------------------------------------------------------


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The ``steps`` code timesteps DDIM visits, in sampling order (descending).

    They are ``round(i * (T - 1) / (steps - 1))`` for ``i = 0..steps-1``: evenly spaced and
    always including both ``T - 1`` and ``0``. Starting at ``T - 1`` (rather than the DDIM
    paper's ``0, c, 2c, ...``) means the first step sees the noise level that ``x_T ~ N(0, I)``
    was drawn for; ending at ``0`` means the final step goes from the least-noisy level to ``x0``.
    """
    if not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(
            f"steps must be an integer with 1 <= steps <= T = {timesteps}, got {steps!r}"
        )
    if steps == 1:
        return [timesteps - 1]
    # Integer round-half-up keeps the sequence strictly increasing (round-half-even may not).
    d = steps - 1
    ts = [(2 * i * (timesteps - 1) + d) // (2 * d) for i in range(steps)]
    return ts[::-1]


def _alpha_bar_at(schedule: DiffusionSchedule, t: int) -> float:
    # Step -1 stands for clean data, which has alpha_bar = 1.
    return 1.0 if t < 0 else float(schedule.alpha_bars[t])


def ddim_sigma(schedule: DiffusionSchedule, t: int, t_prev: int, eta: float) -> float:
    """DDIM eq. 16: ``sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)``.

    ``t_prev = -1`` means the step lands on clean data (``ab_prev = 1``, so ``sigma = 0``). With
    ``eta = 1`` and ``t_prev = t - 1`` this is ``sqrt(beta_tilde_t)``, i.e. DDPM's posterior
    variance.
    """
    ab_t, ab_prev = _alpha_bar_at(schedule, t), _alpha_bar_at(schedule, t_prev)
    return eta * math.sqrt((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev))


def ddim_step(
    model_output: torch.Tensor,
    xt: torch.Tensor,
    t: int,
    t_prev: int,
    schedule: DiffusionSchedule,
    *,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = True,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update from code step ``t`` to ``t_prev < t`` (``-1`` = clean data).

    DDIM eq. 12::

        x_prev = sqrt(ab_prev) * x0_pred + sqrt(1 - ab_prev - sigma^2) * eps_pred + sigma * noise

    with ``sigma`` from :func:`ddim_sigma`. When ``clip_x0`` clamps ``x0_pred``, ``eps_pred`` is
    recomputed from the clamped value so the pair stays consistent with ``x_t``. ``noise`` is
    required when ``sigma > 0``. Returns ``(x_prev, x0_pred)``.
    """
    if t_prev >= t:
        raise ValueError(f"t_prev must be smaller than t, got t={t}, t_prev={t_prev}")
    x0 = schedule.predict_x0(model_output, xt, t, prediction)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = schedule.predict_eps(x0, xt, t, "x0")
    else:
        eps = schedule.predict_eps(model_output, xt, t, prediction)

    ab_prev = _alpha_bar_at(schedule, t_prev)
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    # Analytically >= 0 for eta <= 1 (0 when landing on x0); the clamp absorbs rounding and,
    # for eta > 1, drops the deterministic direction term rather than producing a NaN.
    direction = math.sqrt(max(1.0 - ab_prev - sigma**2, 0.0))
    x_prev = math.sqrt(ab_prev) * x0 + direction * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step needs noise when eta > 0 gives sigma > 0")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


@torch.inference_mode()
def ddim_sample(
    denoise_fn: DenoiseFn,
    shape: Sequence[int] | None,
    schedule: DiffusionSchedule,
    *,
    steps: int,
    eta: float = 0.0,
    prediction: str = "eps",
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    return_trajectory_at: Iterable[int] | None = None,
    progress: bool = False,
) -> SampleResult:
    """DDIM sampling (Song et al. 2021) over ``steps`` timesteps from :func:`ddim_timesteps`.

    ``eta = 0`` is deterministic given ``x_T`` (pass ``x_T`` to reuse the same starting noise,
    e.g. to interpolate between latents); ``eta = 1`` with ``steps = T`` is the DDPM sampler with
    ``variance="beta_tilde"``. The last step lands on ``x0`` with no noise; with ``clip_x0`` the
    result lies in ``[-1, 1]``. Costs ``steps`` network calls.

    ``return_trajectory_at`` may only name visited steps (see :func:`ddim_timesteps`).
    Returns the samples, or ``(samples, {t: x_t})`` when ``return_trajectory_at`` is given.
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    seq = ddim_timesteps(schedule.timesteps, steps)
    wanted = _trajectory_request(
        return_trajectory_at, seq, "pick them from ddim_timesteps(T, steps)"
    )
    x = _initial_noise(shape, x_T, generator, device, dtype)
    trajectory: dict[int, torch.Tensor] = {}

    prev_seq = seq[1:] + [-1]
    for t, t_prev in _progress(list(zip(seq, prev_seq, strict=True)), progress, "ddim"):
        if wanted is not None and t in wanted:
            trajectory[t] = x.clone()
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = denoise_fn(x, t_batch)
        noise = None
        if eta > 0 and t_prev >= 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x, _ = ddim_step(
            out,
            x,
            t,
            t_prev,
            schedule,
            eta=eta,
            prediction=prediction,
            clip_x0=clip_x0,
            noise=noise,
        )
    return x if wanted is None else (x, trajectory)
