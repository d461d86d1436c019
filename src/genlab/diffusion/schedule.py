"""Noise schedules and the closed-form Gaussian algebra of DDPM (Ho et al. 2020).

Everything here is plain tensor math: no ``nn.Module``, no network, no randomness except where
a caller asks for fresh noise.

Conventions
-----------
* Images ``x0`` live in ``[-1, 1]``.
* Timesteps are 0-indexed integers ``t in {0, ..., T-1}``. Code ``t`` is the paper's ``t + 1``:
  code ``t = 0`` is the paper's ``x_1`` (the least noisy latent) and code ``t = T-1`` is the
  paper's ``x_T`` (approximately pure noise). Clean data ``x0`` has no code index; it is what the
  last reverse step produces. Every per-step array below is indexed the same way, so
  ``betas[t]`` is the paper's ``beta_{t+1}`` and ``alpha_bars[t]`` is ``alpha_bar_{t+1}``.
* ``alpha_bars_prev[t]`` is ``alpha_bar`` of the step before ``t``; it is ``1`` at ``t = 0``
  because ``x0`` has no noise.
* ``t`` arguments accept a Python int (same step for the whole batch) or an integer tensor of
  shape ``(B,)``. Out-of-range steps are not checked per call (that would force a device sync).

Prediction targets (what the network outputs)
---------------------------------------------
* ``"eps"``: the noise ``eps`` in ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps`` (Ho et al.).
* ``"x0"``: the clean image.
* ``"v"``: ``v = sqrt(ab) eps - sqrt(1 - ab) x0`` (Salimans & Ho 2022).

Dtypes and devices
------------------
The schedule keeps its arrays in float64 on the CPU. Each method gathers the coefficients it
needs, casts them to ``promote(input dtypes, float32)`` and moves them to the inputs' device
(copies are cached per device), computes there, and returns tensors in the inputs' own dtype.
So bf16 inputs get float32 arithmetic, and CUDA inputs work without calling ``.to`` first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("beta", "beta_tilde")

Timesteps = int | torch.Tensor


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


# --------------------------------------------------------------------------------------
# Beta schedules
# --------------------------------------------------------------------------------------


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17 ``f(t) / f(0)`` for continuous ``t in [0, 1]``.

    ``f(t) = cos(((t + s) / (1 + s)) * pi / 2) ** 2``; the offset ``s`` keeps ``beta`` from being
    vanishingly small near ``t = 0``.
    """
    t = t.to(torch.float64)
    f = torch.cos((t + s) / (1 + s) * (math.pi / 2)) ** 2
    f0 = math.cos(s / (1 + s) * (math.pi / 2)) ** 2
    return f / f0


def make_betas(schedule: str, timesteps: int) -> torch.Tensor:
    """Return the ``(timesteps,)`` float64 beta schedule.

    * ``"linear"``: Ho et al. 2020, ``linspace(1e-4, 0.02, T)`` at ``T = 1000``. For other ``T``
      both ends are multiplied by ``1000 / T`` (Nichol & Dhariwal 2021, as in their code) so the
      total amount of noise, and hence ``alpha_bar`` at the last step, stays about the same.
      This makes ``beta >= 1`` for ``T <= 20``, which is refused.
    * ``"cosine"``: Nichol & Dhariwal 2021, ``beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1)`` from
      :func:`cosine_alpha_bar`, clipped at 0.999 to avoid the singularity at the end.
    """
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        start, end = 1e-4 * scale, 0.02 * scale
        if end >= 1.0:
            raise ValueError(
                f"the linear schedule with timesteps={timesteps} has beta_T = {end:g} >= 1 "
                "(the ends scale by 1000/T); use timesteps > 20 or the 'cosine' schedule"
            )
        return torch.linspace(start, end, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        grid = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = cosine_alpha_bar(grid)
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


# --------------------------------------------------------------------------------------
# The schedule object
# --------------------------------------------------------------------------------------


class DiffusionSchedule:
    """Precomputed per-step quantities of a DDPM forward process and its Gaussian posteriors.

    Build it from betas (``DiffusionSchedule(make_betas("linear", 1000))``) or by name
    (``DiffusionSchedule.from_name("cosine", 1000)``). All per-step arrays are float64 CPU tensors
    of shape ``(T,)``, indexed by code timestep (see the module docstring).
    """

    def __init__(self, betas: torch.Tensor | Sequence[float]) -> None:
        # Built outside inference mode even when called inside it: inference tensors could never
        # take part in a training loss afterwards.
        with torch.inference_mode(False):
            self._build(betas)
        self._cache: dict[tuple[torch.device, torch.dtype], dict[str, torch.Tensor]] = {}

    def _build(self, betas: torch.Tensor | Sequence[float]) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-d tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in the open interval (0, 1)")

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])

        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        # Kept in float64: 1 - alpha_bar near t = 0 is ~1e-4 and would lose digits in float32.
        self.one_minus_alpha_bars = 1.0 - self.alpha_bars
        self.log_one_minus_alpha_bars = torch.log(self.one_minus_alpha_bars)
        self.sqrt_one_minus_alpha_bars = self.one_minus_alpha_bars.sqrt()

        # q(x_{t-1} | x_t, x0) = N(coef1 * x0 + coef2 * x_t, beta_tilde), Ho et al. eq. 6-7.
        one_minus_ab = self.one_minus_alpha_bars
        self.posterior_variance = betas * (1.0 - self.alpha_bars_prev) / one_minus_ab
        self.posterior_mean_coef1 = betas * self.alpha_bars_prev.sqrt() / one_minus_ab
        self.posterior_mean_coef2 = (1.0 - self.alpha_bars_prev) * self.alphas.sqrt() / one_minus_ab
        # beta_tilde is exactly 0 at t = 0 (the step lands on x0 itself), so its log is -inf.
        # Like the reference implementations we substitute the t = 1 value, which keeps the
        # decoder p(x0 | x_1) a proper Gaussian; with T = 1 there is no t = 1, so beta is used.
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first, self.posterior_variance[1:]])
        )
        # sigma_t^2 = beta_t (Ho et al. sec 3.2, "fixedlarge"). At t = 0 the reference code uses
        # beta_tilde at t = 1 instead of beta_0; it only changes the decoder term L_0 of the bound,
        # since the last sampling step adds no noise.
        self.large_variance = torch.cat([first, betas[1:]])
        self.log_large_variance = torch.log(self.large_variance)

    @classmethod
    def from_name(cls, schedule: str, timesteps: int) -> DiffusionSchedule:
        """``DiffusionSchedule(make_betas(schedule, timesteps))``."""
        return cls(make_betas(schedule, timesteps))

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps ``T``."""
        return self.betas.numel()

    def __len__(self) -> int:
        return self.timesteps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.timesteps}, beta[0]={self.betas[0].item():.3g}, "
            f"beta[-1]={self.betas[-1].item():.3g}, alpha_bar[-1]={self.alpha_bars[-1].item():.3g})"
        )

    # ---- gathering coefficients ------------------------------------------------------------

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = {}
        table = self._cache[key]
        if name not in table:
            # The first call may come from a sampler under inference_mode; the copy must still be
            # an ordinary tensor so later training losses can use it. Cast on the CPU first: some
            # backends (MPS) cannot hold float64 at all.
            with torch.inference_mode(False):
                table[name] = getattr(self, name).to(dtype, copy=True).to(device)
        return table[name]

    def _gather(
        self, name: str, t: Timesteps, like: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """``name[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against ``like``."""
        table = self._table(name, like.device, dtype)
        if not isinstance(t, torch.Tensor):
            return table[int(t)].reshape((1,) * like.ndim)
        t = t.to(device=like.device, dtype=torch.long)
        if t.ndim == 0:
            return table[t].reshape((1,) * like.ndim)
        return table[t].reshape((-1,) + (1,) * (like.ndim - 1))

    @staticmethod
    def _dtypes(*tensors: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
        """(compute dtype, output dtype) for a call on ``tensors``."""
        out = tensors[0].dtype
        for x in tensors[1:]:
            out = torch.promote_types(out, x.dtype)
        return torch.promote_types(out, torch.float32), out

    # ---- forward process --------------------------------------------------------------------

    def q_mean_variance(
        self, x0: torch.Tensor, t: Timesteps
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of ``q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I)``.

        The variance terms have shape ``(B, 1, ..., 1)`` (or all ones for an int ``t``).
        """
        cd, od = self._dtypes(x0)
        mean = self._gather("sqrt_alpha_bars", t, x0, cd) * x0.to(cd)
        var = self._gather("one_minus_alpha_bars", t, x0, cd)
        log_var = self._gather("log_one_minus_alpha_bars", t, x0, cd)
        return mean.to(od), var.to(od), log_var.to(od)

    def q_sample(
        self, x0: torch.Tensor, t: Timesteps, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x0)`` in closed form: ``sqrt(ab) x0 + sqrt(1 - ab) noise``.

        ``noise`` defaults to ``torch.randn_like(x0)``; pass it explicitly to reuse it as the
        training target or to make the draw reproducible.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        cd, od = self._dtypes(x0, noise)
        a = self._gather("sqrt_alpha_bars", t, x0, cd)
        s = self._gather("sqrt_one_minus_alpha_bars", t, x0, cd)
        return (a * x0.to(cd) + s * noise.to(cd)).to(od)

    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: Timesteps
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and (clipped) log-variance of ``q(x_{t-1} | x_t, x0)``.

        Ho et al. eq. 6-7: mean ``= coef1 * x0 + coef2 * x_t``, variance ``beta_tilde_t``.
        At ``t = 0`` the mean is ``x0`` and the variance 0; the log-variance there is the clipped
        value described in the class (the step-1 variance).
        """
        cd, od = self._dtypes(x0, xt)
        c1 = self._gather("posterior_mean_coef1", t, xt, cd)
        c2 = self._gather("posterior_mean_coef2", t, xt, cd)
        mean = c1 * x0.to(cd) + c2 * xt.to(cd)
        var = self._gather("posterior_variance", t, xt, cd)
        log_var = self._gather("posterior_log_variance_clipped", t, xt, cd)
        return mean.to(od), var.to(od), log_var.to(od)

    # ---- conversions between prediction targets ----------------------------------------------

    def _prediction_inputs(self, model_output, xt, t, prediction):
        """The network output and x_t in compute precision, sqrt(ab_t), sqrt(1 - ab_t), and
        the dtype to return in: what converting between eps, x0 and v needs."""
        check_choice("prediction", prediction, PREDICTIONS)
        cd, od = self._dtypes(model_output, xt)
        a = self._gather("sqrt_alpha_bars", t, xt, cd)
        s = self._gather("sqrt_one_minus_alpha_bars", t, xt, cd)
        return model_output.to(cd), xt.to(cd), a, s, od

    def predict_x0(
        self, model_output: torch.Tensor, xt: torch.Tensor, t: Timesteps, prediction: str = "eps"
    ) -> torch.Tensor:
        """The clean image implied by ``model_output`` at ``(x_t, t)``.

        eps: ``(x_t - sqrt(1 - ab) eps) / sqrt(ab)``; x0: as is;
        v: ``sqrt(ab) x_t - sqrt(1 - ab) v``.
        """
        out, xt_c, a, s, od = self._prediction_inputs(model_output, xt, t, prediction)
        if prediction == "eps":
            x0 = (xt_c - s * out) / a
        elif prediction == "x0":
            x0 = out
        else:
            x0 = a * xt_c - s * out
        return x0.to(od)

    def predict_eps(
        self, model_output: torch.Tensor, xt: torch.Tensor, t: Timesteps, prediction: str = "eps"
    ) -> torch.Tensor:
        """The noise implied by ``model_output`` at ``(x_t, t)``.

        eps: as is; x0: ``(x_t - sqrt(ab) x0) / sqrt(1 - ab)``;
        v: ``sqrt(1 - ab) x_t + sqrt(ab) v``.
        """
        out, xt_c, a, s, od = self._prediction_inputs(model_output, xt, t, prediction)
        if prediction == "eps":
            eps = out
        elif prediction == "x0":
            eps = (xt_c - a * out) / s
        else:
            eps = s * xt_c + a * out
        return eps.to(od)

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: Timesteps, prediction: str = "eps"
    ) -> torch.Tensor:
        """Regression target for a network of the given prediction type.

        For ``x_t = q_sample(x0, t, noise)``: eps -> ``noise``, x0 -> ``x0``,
        v -> ``sqrt(ab) noise - sqrt(1 - ab) x0``.
        """
        check_choice("prediction", prediction, PREDICTIONS)
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        cd, od = self._dtypes(x0, noise)
        a = self._gather("sqrt_alpha_bars", t, x0, cd)
        s = self._gather("sqrt_one_minus_alpha_bars", t, x0, cd)
        return (a * noise.to(cd) - s * x0.to(cd)).to(od)

    def loss_weight(
        self, t: torch.Tensor, prediction: str = "eps", min_snr_gamma: float | None = None
    ) -> torch.Tensor:
        """Per-item weights of the training MSE, float32 of t's shape. None: 1 (Ho et al.'s
        simple loss). A number gamma: min-SNR-gamma (Hang et al. 2023), the weight that turns
        the target's MSE into min(SNR_t, gamma) times the x0 MSE, so the low-noise steps (where
        SNR is huge and the task easy) stop dominating the gradient: eps -> min(SNR, g) / SNR,
        x0 -> min(SNR, g), v -> min(SNR, g) / (SNR + 1)."""
        if min_snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        check_choice("prediction", prediction, PREDICTIONS)
        ab = self._table("alpha_bars", t.device, torch.float32)[t]
        snr = ab / self._table("one_minus_alpha_bars", t.device, torch.float32)[t]
        clipped = snr.clamp(max=min_snr_gamma)
        weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]
        return weight

    # ---- reverse process ------------------------------------------------------------------

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        xt: torch.Tensor,
        t: Timesteps,
        prediction: str = "eps",
        variance: str = "beta",
        clip_x0: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance, log-variance of ``p_theta(x_{t-1} | x_t)`` and the predicted ``x0``.

        The mean is the posterior mean ``q(x_{t-1} | x_t, x0 = pred_x0)``, which for eps
        prediction equals Ho et al. eq. 11. ``clip_x0`` clamps ``pred_x0`` to ``[-1, 1]`` before
        forming the mean (as in Ho et al.'s sampler); leave it off when evaluating the bound.
        ``variance`` picks ``sigma_t^2``: ``"beta"`` (``beta_t``) or ``"beta_tilde"``
        (``beta_tilde_t``), the two extremes of Ho et al. sec 3.2. Both use the clipped step-1
        value at ``t = 0`` (see the class).
        """
        check_choice("variance", variance, VARIANCES)
        pred_x0 = self.predict_x0(model_output, xt, t, prediction)
        if clip_x0:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior(pred_x0, xt, t)
        cd, od = self._dtypes(model_output, xt)
        if variance == "beta":
            var = self._gather("large_variance", t, xt, cd)
            log_var = self._gather("log_large_variance", t, xt, cd)
        else:
            log_var = self._gather("posterior_log_variance_clipped", t, xt, cd)
            var = log_var.exp()
        return mean, var.to(od), log_var.to(od), pred_x0
