"""DDPM building blocks as plain tensor math: schedules, samplers and the variational bound.

See :mod:`genlab.diffusion.schedule` for the timestep convention (code ``t`` = paper ``t + 1``)
and the prediction types. Typical use, with ``net(x_t, t, y)`` a :class:`genlab.nets.unet.UNet`
and ``x0`` in ``[-1, 1]``::

    schedule = DiffusionSchedule.from_name("linear", 1000)

    # training step (Ho et al. Algorithm 1, "simple" loss)
    t = torch.randint(0, schedule.timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = schedule.q_sample(x0, t, noise)
    loss = F.mse_loss(net(x_t, t, y), schedule.target(x0, noise, t, "eps"))

    # sampling (net.eval() first)
    samples = ddpm_sample(lambda x, t: net(x, t, y), x0.shape, schedule, device=x0.device)
    samples = ddim_sample(lambda x, t: net(x, t, y), x0.shape, schedule, steps=50)

    # likelihood bound, T network calls per batch
    bpd = vlb_terms(lambda x, t: net(x, t), x0, schedule).bits_per_dim
"""

from genlab.diffusion.bound import (
    VLBTerms,
    discretized_gaussian_log_likelihood,
    normal_kl,
    vlb_terms,
)
from genlab.diffusion.samplers import (
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
)
from genlab.diffusion.schedule import (
    PREDICTIONS,
    SCHEDULES,
    VARIANCES,
    DiffusionSchedule,
    cosine_alpha_bar,
    make_betas,
)

__all__ = [
    "PREDICTIONS",
    "SCHEDULES",
    "VARIANCES",
    "DiffusionSchedule",
    "VLBTerms",
    "cosine_alpha_bar",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "make_betas",
    "normal_kl",
    "vlb_terms",
]
