"""The DDPM variational bound on -log p(x0), reported in bits per dimension.

Ho et al. 2020 eq. 5 splits the bound into

    L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))                      prior term, no network
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))  Gaussian vs Gaussian
    L_0     = -log p_theta(x0 | x_1)                          discretised Gaussian decoder

(paper indices). In code indices (see :mod:`genlab.diffusion.schedule`) the network evaluated at
code step ``t`` produces the paper's ``L_t``: step 0 gives the decoder term ``L_0``, steps
``1..T-1`` give the KL terms ``L_1..L_{T-1}``. :class:`VLBTerms` keeps them in one ``(B, T)``
tensor whose column ``t`` is ``L_t``.

Each ``L_t`` is estimated with one draw of ``x_{t+1} ~ q(. | x0)`` (paper index), as in Ho et al.
The data must be 8-bit images mapped to ``[-1, 1]`` (``x = k / 127.5 - 1``): the decoder puts
probability mass on those 256 levels, so the bound is a codelength for the discrete data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.special import log_ndtr

from genlab import interrupt
from genlab.diffusion.schedule import DiffusionSchedule

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats.

    ``0.5 * (logvar2 - logvar1 + (exp(logvar1) + (mean1 - mean2)^2) / exp(logvar2) - 1)``.
    Arguments broadcast against each other.
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def _log_prob_between(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, accurate in both tails."""
    # Deep in the upper tail Phi(hi) and Phi(lo) both round to 1; the mirrored difference
    # Phi(-lo) - Phi(-hi) is the same number without the cancellation.
    upper = lo > 0
    big = torch.where(upper, -lo, hi)
    small = torch.where(upper, -hi, lo)
    log_big = log_ndtr(big)
    # The floor keeps log finite (and gradients free of NaN) when the bin holds ~no mass.
    ratio = (-torch.expm1(log_ndtr(small) - log_big)).clamp_min(1e-12)
    return log_big + torch.log(ratio)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """Elementwise log-probability of the bin containing ``x`` under ``N(mean, exp(log_scale)^2)``.

    Ho et al. sec 3.3: ``[-1, 1]`` holds ``num_bins`` evenly spaced levels, each owning the
    interval of half-width ``1 / (num_bins - 1)`` around it, except that the first and last bins
    extend to ``-inf`` and ``+inf`` so the probabilities of all levels sum to one. ``x`` must lie
    on the levels; ``log_scale`` is the log standard deviation.
    """
    half = 1.0 / (num_bins - 1)
    inv_std = torch.exp(-log_scale)
    lo = (x - mean - half) * inv_std
    hi = (x - mean + half) * inv_std
    edge = 1.0 - half  # halfway between the outermost level and its neighbour
    return torch.where(
        x < -edge,
        log_ndtr(hi),
        torch.where(x > edge, log_ndtr(-lo), _log_prob_between(lo, hi)),
    )


@dataclass(frozen=True)
class VLBTerms:
    """Per-image terms of the variational bound, in nats unless the name says otherwise.

    ``prior_nats``: ``(B,)`` the prior term ``L_T``.
    ``terms_nats``: ``(B, T)``; column ``t`` is the paper's ``L_t`` computed with the network at
    code step ``t`` (column 0 is the decoder term, columns ``1..T-1`` the KL terms).
    ``num_dims``: values per image, for the bits/dim conversion.
    """

    prior_nats: torch.Tensor
    terms_nats: torch.Tensor
    num_dims: int

    @property
    def decoder_nats(self) -> torch.Tensor:
        """``(B,)`` decoder term ``L_0 = -log p(x0 | x_1)``."""
        return self.terms_nats[:, 0]

    @property
    def kl_nats(self) -> torch.Tensor:
        """``(B, T-1)`` KL terms; column ``j`` is the paper's ``L_{j+1}`` (code step ``j + 1``)."""
        return self.terms_nats[:, 1:]

    @property
    def kl_sum_nats(self) -> torch.Tensor:
        """``(B,)`` ``sum_{t=2..T} L_{t-1}`` (paper indices)."""
        return self.kl_nats.sum(dim=1)

    @property
    def total_nats(self) -> torch.Tensor:
        """``(B,)`` the whole bound ``L_T + sum L_{t-1} + L_0``."""
        return self.prior_nats + self.terms_nats.sum(dim=1)

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """``(B,)`` the bound in bits per dimension: ``total_nats / (num_dims * ln 2)``."""
        return self.total_nats / (self.num_dims * math.log(2.0))


@torch.inference_mode()
def vlb_terms(
    denoise_fn: DenoiseFn,
    x0: torch.Tensor,
    schedule: DiffusionSchedule,
    *,
    prediction: str = "eps",
    variance: str = "beta",
    clip_x0: bool = False,
    t_batch_chunk: int = 1,
    generator: torch.Generator | None = None,
) -> VLBTerms:
    """Evaluate every term of the bound for the images ``x0`` (``(B, ...)``, on the 8-bit grid).

    This is the expensive part of likelihood evaluation: it calls ``denoise_fn`` once per
    timestep, i.e. ``T`` forward passes over the batch (1000 for a standard model).
    ``t_batch_chunk`` trades memory for fewer, larger calls: ``k`` timesteps are stacked into one
    call on ``k * B`` images, timestep-major (row ``j * B + i`` is image ``i`` at the chunk's
    ``j``-th timestep), so a class-conditional callable should use ``y.repeat(k)`` for ``k``
    taken from ``len(t) // B``. The noise draws do not depend on ``k``, so for a fixed
    ``generator`` seed the result does not either.

    ``prediction``/``variance``/``clip_x0`` configure ``p_theta`` as in
    :meth:`DiffusionSchedule.p_mean_variance`; keep ``clip_x0=False`` for a true bound of the
    Gaussian model (clipping is a sampling heuristic). Runs under ``torch.inference_mode()``.
    """
    if t_batch_chunk < 1:
        raise ValueError(f"t_batch_chunk must be >= 1, got {t_batch_chunk}")
    T = schedule.timesteps
    B = x0.shape[0]
    x0 = x0.to(torch.promote_types(x0.dtype, torch.float32))
    expand = (1,) * (x0.ndim - 1)

    q_mean, _, q_log_var = schedule.q_mean_variance(x0, T - 1)
    zeros = torch.zeros((), device=x0.device, dtype=x0.dtype)
    prior = normal_kl(q_mean, q_log_var, zeros, zeros).flatten(1).sum(dim=1)

    terms = x0.new_zeros(B, T)
    for start in range(0, T, t_batch_chunk):
        interrupt.poll()  # T network calls per image: stop between chunks on SIGTERM
        stop = min(start + t_batch_chunk, T)
        k = stop - start
        noise = torch.cat(
            [
                torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                for _ in range(k)
            ]
        )
        x0_k = x0.repeat(k, *expand)
        t_k = torch.arange(start, stop, device=x0.device).repeat_interleave(B)
        xt = schedule.q_sample(x0_k, t_k, noise)
        out = denoise_fn(xt, t_k)
        p_mean, _, p_log_var, _ = schedule.p_mean_variance(
            out, xt, t_k, prediction=prediction, variance=variance, clip_x0=clip_x0
        )
        p_mean, p_log_var = p_mean.to(x0.dtype), p_log_var.to(x0.dtype)
        post_mean, _, post_log_var = schedule.q_posterior(x0_k, xt, t_k)

        kl = normal_kl(post_mean, post_log_var, p_mean, p_log_var).flatten(1).sum(dim=1)
        decoder_nll = -discretized_gaussian_log_likelihood(x0_k, p_mean, 0.5 * p_log_var)
        decoder_nll = decoder_nll.flatten(1).sum(dim=1)
        term = torch.where(t_k == 0, decoder_nll, kl)
        terms[:, start:stop] = term.reshape(k, B).T

    return VLBTerms(prior_nats=prior, terms_nats=terms, num_dims=x0[0].numel())
