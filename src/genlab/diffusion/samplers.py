"""Samplers as small classes with the diffusers scheduler contract.

A sampler holds the schedule and its own options, and answers two questions:

* :meth:`Sampler.timesteps` -- which code timesteps (0-indexed, see
  :mod:`genlab.diffusion.schedule`) it feeds the network, in sampling order (descending);
* :meth:`Sampler.step` -- given the network's output at ``x_t``, the next latent ``x_{t_prev}``
  (``t_prev = -1`` is clean data).

Everything else -- the starting noise, trajectories, classifier-free guidance, progress and stop
requests -- belongs to the one loop in :mod:`genlab.diffusion.loop`, so a new sampler is one
class here, its entry in :data:`SAMPLERS`, and its rules (takes eta, visits all T steps,
deterministic, one line of help) in the torch-free :data:`genlab.sampler_rules.SAMPLER_RULES`,
which the class reads as ``rules`` and every option check and help text derives from.

Randomness comes only from the ``generator`` passed to :meth:`Sampler.step`; a stochastic step
draws its noise after the network call of that step, so a seeded generator that also drew
``x_T`` gives the same chain on every run.
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch

from genlab.diffusion.schedule import PREDICTIONS, DiffusionSchedule, check_choice
from genlab.sampler_rules import SAMPLER_RULES, SamplerRules


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_x0: torch.Tensor  # the step's (clipped, with clip_x0) prediction of clean data


def check_steps(steps: int, timesteps: int) -> None:
    """The one range check for a number of sampler steps (the model's ``sample_steps``)."""
    if not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(
            f"sample_steps={steps!r} is not a number of sampler steps: it must be an integer "
            f"with 1 <= steps <= T = {timesteps}"
        )


class Sampler:
    """Base class: the schedule, the prediction type and ``clip_x0``, and the step count.

    Subclasses set :attr:`rules` (their entry of ``SAMPLER_RULES``) and :attr:`name` (its
    name), list in :attr:`options` the extra keyword settings their ``__init__`` takes (so
    :func:`make_sampler` can hand a model's whole sampling setup to any of them; ``"eta"``
    exactly when ``rules.takes_eta``), and implement :meth:`timesteps` and :meth:`step`.
    """

    rules: ClassVar[SamplerRules]
    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        schedule: DiffusionSchedule,
        steps: int,
        *,
        prediction: str = "eps",
        clip_x0: bool = True,
    ):
        check_choice("prediction", prediction, PREDICTIONS)
        check_steps(steps, schedule.timesteps)
        self.schedule, self.steps = schedule, steps
        self.prediction, self.clip_x0 = prediction, clip_x0

    def timesteps(self) -> list[int]:
        """The code timesteps this sampler visits, in sampling order (descending)."""
        raise NotImplementedError

    def visit_hint(self) -> str:
        """How to pick valid trajectory steps: the error when a requested one is never visited."""
        return "pick them from the sampler's timesteps()"

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One update from step ``t`` to ``t_prev`` (the next visited step, ``-1`` at the end)."""
        raise NotImplementedError

    @staticmethod
    def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------------------
# DDPM (Ho et al. 2020, Algorithm 2)
# --------------------------------------------------------------------------------------


class AncestralSampler(Sampler):
    """Ancestral sampling over all ``T`` steps: ``x_{t-1} = mu_theta(x_t, t) + sigma_t z``.

    ``steps`` is range-checked but not used: Algorithm 2 visits every step. No noise is added at
    the last step, so the result is the mean of ``p_theta(x0 | x_1)``; with ``clip_x0`` that is
    the clipped ``x0`` prediction and lies in ``[-1, 1]``. ``variance`` is ``"beta"`` or
    ``"beta_tilde"`` (see :meth:`DiffusionSchedule.p_mean_variance`).
    """

    rules = SAMPLER_RULES["ddpm"]
    name = rules.name
    options = ("variance",)

    def __init__(self, schedule, steps, *, prediction="eps", clip_x0=True, variance="beta"):
        super().__init__(schedule, steps, prediction=prediction, clip_x0=clip_x0)
        self.variance = variance

    def timesteps(self) -> list[int]:
        return list(range(self.schedule.timesteps - 1, -1, -1))

    def visit_hint(self) -> str:
        return f"DDPM visits every step 0..{self.schedule.timesteps - 1}"

    def step(self, model_output, t, t_prev, x_t, *, generator=None) -> StepOutput:
        mean, _, log_var, pred_x0 = self.schedule.p_mean_variance(
            model_output,
            x_t,
            t,
            prediction=self.prediction,
            variance=self.variance,
            clip_x0=self.clip_x0,
        )
        if t == 0:
            return StepOutput(mean, pred_x0)
        return StepOutput(mean + (0.5 * log_var).exp() * self._noise(x_t, generator), pred_x0)


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
    check_steps(steps, timesteps)
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


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) over the ``steps`` timesteps of :func:`ddim_timesteps`.

    ``eta = 0`` is deterministic given ``x_T``; ``eta = 1`` with ``steps = T`` is the ancestral
    sampler with ``variance="beta_tilde"``. The last step lands on ``x0`` with no noise; with
    ``clip_x0`` the result lies in ``[-1, 1]``.
    """

    rules = SAMPLER_RULES["ddim"]
    name = rules.name
    options = ("eta",)

    def __init__(self, schedule, steps, *, prediction="eps", clip_x0=True, eta=0.0):
        super().__init__(schedule, steps, prediction=prediction, clip_x0=clip_x0)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta

    def timesteps(self) -> list[int]:
        return ddim_timesteps(self.schedule.timesteps, self.steps)

    def visit_hint(self) -> str:
        return "pick them from ddim_timesteps(T, steps)"

    def step(self, model_output, t, t_prev, x_t, *, generator=None) -> StepOutput:
        noise = self._noise(x_t, generator) if self.eta > 0 and t_prev >= 0 else None
        x_prev, x0 = ddim_step(
            model_output,
            x_t,
            t,
            t_prev,
            self.schedule,
            eta=self.eta,
            prediction=self.prediction,
            clip_x0=self.clip_x0,
            noise=noise,
        )
        return StepOutput(x_prev, x0)


# --------------------------------------------------------------------------------------
# DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
# Probabilistic Models"), the second-order multistep solver, Algorithm 2
# --------------------------------------------------------------------------------------


def quadratic_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` code timesteps ``round((T - 1) * (1 - i / (steps - 1))^2)``, descending from
    ``T - 1`` to ``0`` (the DDIM paper's quadratic spacing, Song et al. 2021, App. D.2), made
    strictly decreasing where rounding collides near 0 (the largest value stays ``T - 1``)."""
    check_steps(steps, timesteps)
    if steps == 1:
        return [timesteps - 1]
    ts = [round((timesteps - 1) * (1 - i / (steps - 1)) ** 2) for i in range(steps)]
    for i in range(steps - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


class DPMSolverPlusPlusSampler(Sampler):
    """DPM-Solver++(2M): the probability-flow ODE solved in log-SNR time with the network's
    clean-data prediction, second order from the second step on.

    With ``alpha_t = sqrt(ab_t)``, ``sigma_t = sqrt(1 - ab_t)``, ``lambda_t = log(alpha_t /
    sigma_t)`` and ``h = lambda_t_prev - lambda_t``, one step is::

        x_prev = (sigma_prev / sigma_t) * x_t - alpha_prev * (exp(-h) - 1) * D

    where ``D`` is the x0 prediction at ``t`` (first order, the first step) or, with the
    previous step's prediction ``x0_last`` and ``r = h_last / h``,
    ``(1 + 1 / (2 r)) * x0 - 1 / (2 r) * x0_last``. The step onto clean data (``t_prev = -1``,
    where ``lambda`` is infinite) returns the x0 prediction itself, as DDIM's last step does.

    It visits :func:`quadratic_timesteps`, denser near the data: with DDIM's even spacing the
    last interval spans most of the log-SNR range (t = 52 -> 0 of 20 steps on the linear
    schedule), and the second-order extrapolation across it is worse than a first-order step
    (tests/test_samplers.py measures both against the exact ODE). Deterministic given ``x_T``;
    eps, x0 and v networks all work, each turned into an x0 prediction (clipped with
    ``clip_x0``). The solver remembers the last prediction between calls of :meth:`step`: one
    instance drives one sampling run at a time (each run starts at ``T - 1``, which resets it).
    """

    rules = SAMPLER_RULES["dpmpp_2m"]
    name = rules.name

    def __init__(self, schedule, steps, *, prediction="eps", clip_x0=True):
        super().__init__(schedule, steps, prediction=prediction, clip_x0=clip_x0)
        self._last: tuple[torch.Tensor, float] | None = None  # (x0 prediction, its h)

    def timesteps(self) -> list[int]:
        return quadratic_timesteps(self.schedule.timesteps, self.steps)

    def visit_hint(self) -> str:
        return "pick them from quadratic_timesteps(T, steps)"

    def _lambda(self, t: int) -> float:
        ab = _alpha_bar_at(self.schedule, t)
        return 0.5 * (math.log(ab) - math.log1p(-ab))

    def step(self, model_output, t, t_prev, x_t, *, generator=None) -> StepOutput:
        if t_prev >= t:
            raise ValueError(f"t_prev must be smaller than t, got t={t}, t_prev={t_prev}")
        if t == self.schedule.timesteps - 1:
            self._last = None  # a new sampling run: every one starts at T - 1
        x0 = self.schedule.predict_x0(model_output, x_t, t, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        if t_prev < 0:
            self._last = None
            return StepOutput(x0, x0)
        h = self._lambda(t_prev) - self._lambda(t)
        d = x0
        if self._last is not None:
            x0_last, h_last = self._last
            r = h_last / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_last
        self._last = (x0, h)
        ab_t, ab_prev = _alpha_bar_at(self.schedule, t), _alpha_bar_at(self.schedule, t_prev)
        noise_ratio = math.sqrt((1.0 - ab_prev) / (1.0 - ab_t))  # sigma_prev / sigma_t
        return StepOutput(self._move(x_t, d, noise_ratio, ab_prev, h, generator), x0)

    def _move(self, x_t, d, noise_ratio, ab_prev, h, generator) -> torch.Tensor:
        """x_{t_prev} from x_t and the (first- or second-order) data estimate d."""
        return noise_ratio * x_t - math.sqrt(ab_prev) * math.expm1(-h) * d


class DPMSolverPlusPlusSDESampler(DPMSolverPlusPlusSampler):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, Sec. 5 and App. B): DPM-Solver++(2M)'s data
    estimate ``D``, but a step of the reverse SDE instead of the ODE::

        x_prev = (sigma_prev / sigma_t) e^-h x_t + alpha_prev (1 - e^-2h) D
                 + sigma_prev sqrt(1 - e^-2h) z

    Its first-order step is DDIM's at eta = 1. The fresh noise corrects part of the error a
    small network's x0 predictions leave, which a deterministic solver carries to the end. It
    visits DDIM's evenly spaced timesteps: each step's noise is the same share of the way, where
    the quadratic spacing spends most steps near the data (docs/experiments.md measures both: at
    20 network calls the even spacing scores a domain FID about 1.5-2x lower).
    """

    rules = SAMPLER_RULES["dpmpp_2m_sde"]
    name = rules.name

    def timesteps(self) -> list[int]:
        return ddim_timesteps(self.schedule.timesteps, self.steps)

    def visit_hint(self) -> str:
        return "pick them from ddim_timesteps(T, steps)"

    def _move(self, x_t, d, noise_ratio, ab_prev, h, generator) -> torch.Tensor:
        decay = math.exp(-h)
        kept = -math.expm1(-2.0 * h)  # 1 - e^-2h without cancellation for small h
        noise = math.sqrt((1.0 - ab_prev) * kept) * self._noise(x_t, generator)
        return noise_ratio * decay * x_t + math.sqrt(ab_prev) * kept * d + noise


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------

# The only list of samplers: make_sampler, DDPM.sample and (by name, through SAMPLER_RULES)
# sample.py, the Python API, model.sampler and the help texts all go by it.
SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        AncestralSampler,
        DDIMSampler,
        DPMSolverPlusPlusSampler,
        DPMSolverPlusPlusSDESampler,
    )
}


def make_sampler(
    name: str,
    schedule: DiffusionSchedule,
    steps: int,
    *,
    prediction: str = "eps",
    clip_x0: bool = True,
    **settings,
) -> Sampler:
    """The sampler registered as ``name``, with ``steps`` steps.

    ``settings`` may hold every sampler's options at once (a model passes its whole sampling
    setup, e.g. ``variance`` and ``eta``); each sampler takes the ones in its ``options`` and
    leaves the rest, as the ancestral sampler has no use for ``eta``.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    cls = SAMPLERS[name]
    known = {option for sampler in SAMPLERS.values() for option in sampler.options}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"no sampler takes the setting(s) {unknown}; known: {sorted(known)}")
    own = {key: value for key, value in settings.items() if key in cls.options}
    return cls(schedule, steps, prediction=prediction, clip_x0=clip_x0, **own)
