"""DDPM building blocks as plain tensor math: schedules, samplers and the variational bound.

Modules: ``schedule`` (betas, alpha_bars, the Gaussian algebra), ``samplers`` (one small class
per sampler: which timesteps it visits and one ``step``; the ``SAMPLERS`` registry), ``loop``
(the one loop that drives any sampler: x_T, trajectories, guidance, progress), ``bound`` (the
variational bound).

See :mod:`genlab.diffusion.schedule` for the timestep convention (code ``t`` = paper ``t + 1``)
and the prediction types. Typical use, with ``net(x_t, t, y)`` a :class:`genlab.nets.unet.UNet`
and ``x0`` in ``[-1, 1]``::

    schedule = DiffusionSchedule.from_name("linear", 1000)

    # training step (Ho et al. Algorithm 1, "simple" loss)
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(net(x_t, t, y), schedule.target(x0, noise, t, "eps"))

    # sampling (net.eval() first); guidance_scale > 0 needs labels and the null label
    sampler = make_sampler("ddim", schedule, 50, eta=0.0)  # or "ddpm": all T steps
    samples = sample_loop(sampler, net, x0.shape, labels=y, null_label=10, device=x0.device)

    # likelihood bound, T network calls per batch
    bpd = vlb_terms(lambda x, t: net(x, t), x0, schedule).bits_per_dim
"""

from genlab.diffusion.bound import (
    VLBTerms,
    discretized_gaussian_log_likelihood,
    normal_kl,
    vlb_terms,
)
from genlab.diffusion.loop import ddim_sample, ddpm_sample, guided, sample_loop
from genlab.diffusion.samplers import (
    SAMPLERS,
    AncestralSampler,
    DDIMSampler,
    DPMSolverPlusPlusSampler,
    DPMSolverPlusPlusSDESampler,
    Sampler,
    StepOutput,
    check_steps,
    ddim_sigma,
    ddim_step,
    ddim_timesteps,
    make_sampler,
    quadratic_timesteps,
)
from genlab.diffusion.schedule import (
    PREDICTIONS,
    SCHEDULES,
    VARIANCES,
    DiffusionSchedule,
    cosine_alpha_bar,
    make_betas,
)
from genlab.sampler_rules import default_sampler

__all__ = [
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "VARIANCES",
    "AncestralSampler",
    "DDIMSampler",
    "DPMSolverPlusPlusSampler",
    "DPMSolverPlusPlusSDESampler",
    "DiffusionSchedule",
    "Sampler",
    "StepOutput",
    "VLBTerms",
    "check_steps",
    "cosine_alpha_bar",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddim_timesteps",
    "quadratic_timesteps",
    "ddpm_sample",
    "default_sampler",
    "discretized_gaussian_log_likelihood",
    "guided",
    "make_betas",
    "make_sampler",
    "normal_kl",
    "sample_loop",
    "vlb_terms",
]
