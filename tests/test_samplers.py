"""The sampler contract (genlab.diffusion.samplers) and the one loop that drives it
(genlab.diffusion.loop): registry and factory, a new sampler as one class, classifier-free
guidance in one batched call, stop requests between steps. The numerics of the DDPM and DDIM
samplers themselves are checked in test_diffusion.py."""

from __future__ import annotations

import pytest
import torch

from genlab import interrupt
from genlab.diffusion import (
    SAMPLERS,
    AncestralSampler,
    DDIMSampler,
    DiffusionSchedule,
    DPMSolverPlusPlusSampler,
    DPMSolverPlusPlusSDESampler,
    Sampler,
    StepOutput,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    guided,
    make_sampler,
    sample_loop,
)


@pytest.fixture(scope="module")
def sched50() -> DiffusionSchedule:
    return DiffusionSchedule.from_name("linear", 50)


def toy_net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """A t- and label-dependent stand-in for a conditional network."""
    shift = 0.01 * t.to(x.dtype) + (0.0 if y is None else 0.05 * y.to(x.dtype))
    return torch.tanh(0.8 * x) + shift.reshape(-1, *([1] * (x.ndim - 1)))


def test_registry_and_factory(sched50):
    assert dict(SAMPLERS) == {
        "ddpm": AncestralSampler,
        "ddim": DDIMSampler,
        "dpmpp_2m": DPMSolverPlusPlusSampler,
        "dpmpp_2m_sde": DPMSolverPlusPlusSDESampler,
    }
    ancestral = make_sampler("ddpm", sched50, 50, variance="beta_tilde", eta=0.3)
    assert isinstance(ancestral, AncestralSampler) and ancestral.variance == "beta_tilde"
    assert ancestral.timesteps() == list(range(49, -1, -1))
    ddim = make_sampler("ddim", sched50, 5, prediction="v", clip_x0=False, variance="beta", eta=1)
    assert isinstance(ddim, DDIMSampler) and (ddim.eta, ddim.prediction) == (1, "v")
    assert not ddim.clip_x0 and len(ddim.timesteps()) == 5
    known = "ddpm, ddim, dpmpp_2m, dpmpp_2m_sde"
    with pytest.raises(ValueError, match=f"unknown sampler 'euler'; choose one of: {known}"):
        make_sampler("euler", sched50, 5)
    with pytest.raises(TypeError, match="etta"):
        make_sampler("ddim", sched50, 5, etta=0.5)
    with pytest.raises(ValueError, match=r"sample_steps=51 .*1 <= steps <= T = 50"):
        make_sampler("ddpm", sched50, 51)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        make_sampler("ddim", sched50, 5, eta=-0.1)
    with pytest.raises(ValueError, match="prediction"):
        make_sampler("ddim", sched50, 5, prediction="score")


def test_wrappers_are_the_loop(sched50):
    def denoise(x, t):
        return toy_net(x, t, None)

    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for name, wrapped in (
        ("ddpm", ddpm_sample(denoise, (2, 1, 3, 3), sched50, variance="beta_tilde", generator=g())),
        ("ddim", ddim_sample(denoise, (2, 1, 3, 3), sched50, steps=6, eta=0.5, generator=g())),
    ):
        sampler = make_sampler(name, sched50, 6, variance="beta_tilde", eta=0.5)
        assert torch.equal(sample_loop(sampler, toy_net, (2, 1, 3, 3), generator=g()), wrapped)
    # a denoise_fn has its labels folded in already: the loop's guidance options are refused
    with pytest.raises(TypeError, match="guidance_scale"):
        ddim_sample(denoise, (1, 2), sched50, steps=2, guidance_scale=1.0)


class HalvingSampler(Sampler):
    """A sampler defined only here: deterministic DDIM steps at T - 1, then every other step
    below T / 2. It proves that a new sampler needs nothing but this class."""

    name = "halving"
    options = ()

    def timesteps(self):
        T = self.schedule.timesteps
        return [T - 1, *range(T // 2, -1, -2)]

    def step(self, model_output, t, t_prev, x_t, *, generator=None):
        x_prev, x0 = ddim_step(model_output, x_t, t, t_prev, self.schedule, clip_x0=self.clip_x0)
        return StepOutput(x_prev, x0)


def test_a_new_sampler_is_one_class(sched50, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "halving", HalvingSampler)
    sampler = make_sampler("halving", sched50, 50, eta=0.0)  # other samplers' options are left
    visited = sampler.timesteps()
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out, traj = sample_loop(sampler, toy_net, None, x_T=x_T, return_trajectory_at=visited[:2])
    assert sorted(traj) == sorted(visited[:2]) and torch.equal(traj[49], x_T)
    # by hand: the same DDIM steps, in the same order, ending on clean data (-1)
    x = x_T
    for t, t_prev in zip(visited, [*visited[1:], -1], strict=True):
        x, _ = ddim_step(toy_net(x, torch.full((3,), t), None), x, t, t_prev, sched50)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="never visits; pick them from the sampler's timesteps"):
        sample_loop(sampler, toy_net, (1, 2), return_trajectory_at=[48])


def test_guidance_is_one_batched_call_of_the_formula(sched50):
    labels, w = torch.tensor([1, 4, 7]), 2.5
    calls = []

    def net(x, t, y):
        calls.append((len(x), None if y is None else y.tolist()))
        return toy_net(x, t, y)

    x_t, t = torch.randn(3, 1, 4, 4), torch.full((3,), 20)
    cond, uncond = toy_net(x_t, t, labels), toy_net(x_t, t, torch.full((3,), 10))
    expected = cond + w * (cond - uncond)
    torch.testing.assert_close(guided(net, labels, 10, w)(x_t, t), expected)
    assert calls == [(6, [1, 4, 7, 10, 10, 10])]  # conditional and null halves, one call

    calls.clear()
    sampler = make_sampler("ddim", sched50, 4)
    sample_loop(sampler, net, (3, 1, 4, 4), labels=labels, null_label=10, guidance_scale=w)
    assert len(calls) == 4 and all(n == 6 for n, _ in calls)
    calls.clear()
    sample_loop(sampler, net, (3, 1, 4, 4), labels=labels)  # no guidance: the labels, once
    assert calls == [(3, [1, 4, 7])] * 4
    with pytest.raises(ValueError, match="null label"):
        sample_loop(sampler, net, (3, 1, 4, 4), labels=labels, guidance_scale=w)


def test_loop_polls_for_stop_requests_once_per_step(sched50):
    polls = []

    class Stop(Exception):
        pass

    def stop_requested():
        polls.append(1)
        return len(polls) > 3

    interrupt.watch(stop_requested, Stop)
    try:
        with pytest.raises(Stop):
            sample_loop(make_sampler("ddim", sched50, 10), toy_net, (1, 2))
    finally:
        interrupt.unwatch()
    assert len(polls) == 4  # three steps ran; the stop came before the fourth


def test_sample_options_accept_every_registered_sampler():
    # sample.py checks its options before importing torch, from the torch-free sampler table:
    # its names must be the registry's.
    from genlab.sampler_rules import SAMPLER_RULES

    assert set(SAMPLER_RULES) == set(SAMPLERS)


# -- DPM-Solver++(2M) against the exact probability-flow ODE -----------------------------------
def gaussian_data_net(schedule: DiffusionSchedule, mean: float, std: float, prediction: str):
    """The exact network for data ~ N(mean, std^2) per pixel: E[x0 | x_t] in closed form,
    returned as the eps / x0 / v prediction a sampler was built for."""

    def net(x, t, y):
        ab = schedule.alpha_bars[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = mean + a * std**2 / (ab * std**2 + (1 - ab)) * (x - a * mean)
        if prediction == "x0":
            return x0
        if prediction == "eps":
            return (x - a * x0) / s
        return (a * x - x0) / s  # v, as schedule.predict_x0 reads it back

    return net


def exact_ode_end(schedule: DiffusionSchedule, x_T, mean: float, std: float):
    """Where the probability-flow ODE takes x_T for Gaussian data: x_t = a_t mean +
    sqrt(a_t^2 std^2 + s_t^2) u with u fixed, so x_0 = mean + std u."""
    ab = schedule.alpha_bars[-1].to(x_T.dtype)
    u = (x_T - ab.sqrt() * mean) / (ab * std**2 + 1 - ab).sqrt()
    return mean + std * u


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpm_solver_pp_solves_the_ode_of_gaussian_data_to_second_order(prediction):
    """With the exact denoiser of Gaussian data, DPM-Solver++(2M) lands close to the ODE's
    exact end point, much closer than DDIM with the same number of network calls, and its
    error falls faster than the steps grow (second order: (50/20)^2 = 6.25x; measured ~9x),
    DDIM's about as fast (first order: 2.5x; measured 2.4x)."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    mean, std = 0.3, 0.2
    net = gaussian_data_net(schedule, mean, std, prediction)
    x_T = torch.randn(4096, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = exact_ode_end(schedule, x_T, mean, std)
    errors = {}
    for name in ("dpmpp_2m", "ddim"):
        for steps in (20, 50):
            sampler = make_sampler(name, schedule, steps, prediction=prediction, clip_x0=False)
            out = sample_loop(sampler, net, None, x_T=x_T.clone())
            errors[name, steps] = (out - exact).abs().max().item()
    assert errors["dpmpp_2m", 50] < 0.01 < errors["ddim", 50]
    assert errors["dpmpp_2m", 20] < errors["ddim", 20] / 5
    assert errors["dpmpp_2m", 20] / errors["dpmpp_2m", 50] > 4.0
    assert errors["ddim", 20] / errors["ddim", 50] < 3.0


def test_dpm_solver_pp_is_exact_for_one_point_and_restarts_each_run():
    """Data that is one point x*: the x0 prediction is x* at every step, so each first- and
    second-order step keeps x_t = a_t x* + s_t eps exactly, and the run ends on x*. The same
    instance run twice gives the same samples (its memory of the last step is reset)."""
    schedule = DiffusionSchedule.from_name("cosine", 200)
    point = torch.linspace(-0.9, 0.9, 16, dtype=torch.float64).reshape(1, 1, 4, 4)

    def net(x, t, y):  # eps implied by x* at (x_t, t)
        ab = schedule.alpha_bars[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * point) / (1 - ab).sqrt()

    sampler = make_sampler("dpmpp_2m", schedule, 7)
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    visited = sampler.timesteps()
    out, traj = sample_loop(sampler, net, None, x_T=x_T, return_trajectory_at=visited[1:])
    torch.testing.assert_close(out, point.expand_as(out), rtol=0, atol=1e-9)
    eps = (x_T - schedule.alpha_bars[-1].sqrt() * point) / (1 - schedule.alpha_bars[-1]).sqrt()
    for t, x_t in traj.items():
        ab = schedule.alpha_bars[t].to(torch.float64)
        torch.testing.assert_close(x_t, ab.sqrt() * point + (1 - ab).sqrt() * eps)
    assert torch.equal(sample_loop(sampler, net, None, x_T=x_T), out)


def test_quadratic_timesteps_are_strictly_decreasing_from_T_minus_1_to_0():
    from genlab.diffusion import quadratic_timesteps

    assert quadratic_timesteps(1000, 10) == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]
    for T, steps in ((1000, 1000), (1000, 600), (50, 49), (10, 2), (1000, 1)):
        ts = quadratic_timesteps(T, steps)
        assert len(ts) == steps and ts[0] == T - 1 and (steps == 1 or ts[-1] == 0)
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpm_solver_pp_first_order_step_is_ddim(sched50, prediction):
    """DPM-Solver++'s first-order step (its first step, before it has a previous prediction)
    is DDIM's deterministic step in closed form (Lu et al. 2022, Sec. 4): the same x_{t_prev}
    from the same network output, for every pair of steps and prediction type."""
    x_t = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    out = toy_net(x_t, torch.full((2,), 49), None)
    for t_prev in (40, 10, 0, -1):
        solver = make_sampler("dpmpp_2m", sched50, 5, prediction=prediction)
        ours = solver.step(out, 49, t_prev, x_t).prev_sample
        ddim, _ = ddim_step(out, x_t, 49, t_prev, sched50, prediction=prediction)
        torch.testing.assert_close(ours, ddim, rtol=1e-5, atol=1e-6)


# -- SDE-DPM-Solver++(2M) ----------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_sde_dpm_solver_pp_first_order_step_is_ddim_at_eta_1(sched50, prediction):
    """Its first step (no previous prediction yet) is DDIM's eta = 1 step in closed form: the
    same mean and the same noise scale sigma_prev sqrt(1 - e^-2h), fed the same noise."""
    x_t = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    out = toy_net(x_t, torch.full((2,), 49), None)
    for t_prev in (40, 10, 0):
        solver = make_sampler("dpmpp_2m_sde", sched50, 5, prediction=prediction)
        ours = solver.step(out, 49, t_prev, x_t, generator=torch.Generator().manual_seed(7))
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        ddim, _ = ddim_step(
            out, x_t, 49, t_prev, sched50, eta=1.0, prediction=prediction, noise=noise
        )
        torch.testing.assert_close(ours.prev_sample, ddim, rtol=1e-5, atol=1e-6)


def test_sde_dpm_solver_pp_keeps_the_marginals_of_one_point():
    """Data that is one point x*: with the exact x0 prediction every step, first- and
    second-order alike, must leave x_t distributed as N(a_t x*, s_t^2): over 20,000 chains the
    per-pixel mean and std at each visited step match, and every chain ends on x*."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    point = torch.linspace(-0.9, 0.9, 4, dtype=torch.float64).reshape(1, 1, 2, 2)

    def net(x, t, y):
        ab = schedule.alpha_bars[t].to(x.dtype).reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * point) / (1 - ab).sqrt()

    sampler = make_sampler("dpmpp_2m_sde", schedule, 20)
    visited = sampler.timesteps()
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(20_000, 1, 2, 2, dtype=torch.float64, generator=gen)
    out, traj = sample_loop(
        sampler, net, None, x_T=x_T, generator=gen, return_trajectory_at=visited[1:]
    )
    torch.testing.assert_close(out, point.expand_as(out), rtol=0, atol=1e-9)
    for t, x_t in traj.items():
        ab = schedule.alpha_bars[t].to(torch.float64)
        torch.testing.assert_close(x_t.mean(0), ab.sqrt() * point[0], rtol=0, atol=0.03)
        torch.testing.assert_close(x_t.std(0), (1 - ab).sqrt().expand(1, 2, 2), rtol=0.03, atol=0)


def test_sde_dpm_solver_pp_samples_gaussian_data_and_follows_its_generator():
    """With the exact denoiser of N(mean, std^2) data the samples converge to that mean and std
    as the steps grow. On DDIM's even steps the last interval (t = 53 -> 0 of 20 steps) is long
    and the second-order estimate extrapolates across it, which widens the samples: ~55% at 20
    steps, ~15% at 100, under 1% at 500 (the price of the spacing that scores the lower FID on
    genlab's small U-Net, docs/experiments.md). The same generator gives the same samples,
    another seed other ones."""
    schedule = DiffusionSchedule.from_name("linear", 1000)
    mean, std = 0.3, 0.2
    net = gaussian_data_net(schedule, mean, std, "eps")
    assert make_sampler("dpmpp_2m_sde", schedule, 20).timesteps() == ddim_timesteps(1000, 20)

    def draw(steps, seed=0):
        sampler = make_sampler("dpmpp_2m_sde", schedule, steps, clip_x0=False)
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn(50_000, dtype=torch.float64, generator=gen)
        return sample_loop(sampler, net, None, x_T=x_T, generator=gen)

    runs = {steps: draw(steps) for steps in (20, 100, 500)}
    assert all(abs(out.mean().item() - mean) < 0.005 for out in runs.values())
    errors = [abs(runs[steps].std().item() - std) for steps in (20, 100, 500)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.003
    assert torch.equal(draw(20), runs[20]) and not torch.equal(draw(20, seed=1), runs[20])
