"""Tests for genlab.diffusion: schedules, Gaussian algebra, samplers and the variational bound.

Expected values are recomputed here from the papers' formulas with plain Python floats (loops,
``math``) rather than taken from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch

from genlab.diffusion import (
    DiffusionSchedule,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    discretized_gaussian_log_likelihood,
    make_betas,
    normal_kl,
    vlb_terms,
)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def loop_alphas(betas: list[float]) -> tuple[list[float], list[float]]:
    """alphas and alpha_bars by an explicit running product."""
    alphas, alpha_bars, running = [], [], 1.0
    for b in betas:
        alphas.append(1.0 - b)
        running *= 1.0 - b
        alpha_bars.append(running)
    return alphas, alpha_bars


def gaussian_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def point_oracle(schedule: DiffusionSchedule, c: torch.Tensor):
    """Exact eps-predictor when the data is the single point ``c``: eps = (x_t - a c) / s."""
    ab = schedule.alpha_bars.tolist()

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = torch.tensor(ab, dtype=x.dtype)[t].sqrt().reshape(-1, *([1] * (x.ndim - 1)))
        return (x - a * c) / (1.0 - a**2).sqrt()

    return fn


def gaussian_oracle(schedule: DiffusionSchedule, mu: float, sd: float):
    """Exact eps-predictor E[eps | x_t] for 1-d data x0 ~ N(mu, sd^2) (t shared by the batch)."""
    ab = schedule.alpha_bars.tolist()

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a2 = ab[int(t[0])]
        var_xt = a2 * sd**2 + 1.0 - a2
        return math.sqrt(1.0 - a2) * (x - math.sqrt(a2) * mu) / var_xt

    return fn


@pytest.fixture(scope="module")
def sched50() -> DiffusionSchedule:
    return DiffusionSchedule.from_name("linear", 50)


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------


def test_linear_endpoints_at_1000_steps():
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.all(betas[1:] > betas[:-1])


def test_linear_scales_with_1000_over_T():
    betas = make_betas("linear", 250)
    assert betas[0].item() == pytest.approx(4e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.08, rel=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alphas_and_alpha_bars_are_step_by_step_products(name):
    s = DiffusionSchedule.from_name(name, 60)
    betas = s.betas.tolist()
    alphas, alpha_bars = loop_alphas(betas)
    assert s.alphas.tolist() == pytest.approx(alphas, rel=1e-12)
    assert s.alpha_bars.tolist() == pytest.approx(alpha_bars, rel=1e-12)
    assert s.alpha_bars_prev.tolist() == pytest.approx([1.0] + alpha_bars[:-1], rel=1e-12)
    assert len(s) == s.timesteps == 60


def test_cosine_alpha_bar_matches_closed_form_and_decreases():
    T, eps = 200, 0.008
    s = DiffusionSchedule.from_name("cosine", T)

    def f(t: float) -> float:
        return math.cos((t / T + eps) / (1 + eps) * math.pi / 2) ** 2

    expected = [f(t) / f(0) for t in range(1, T + 1)]
    # Clipping at 0.999 only bites at the very end, where f(T) -> 0.
    unclipped = int((s.betas < 0.999).sum())
    assert unclipped >= T - 1
    assert s.alpha_bars[:unclipped].tolist() == pytest.approx(expected[:unclipped], rel=1e-9)
    assert torch.all(s.alpha_bars[1:] < s.alpha_bars[:-1])
    assert s.betas.max().item() <= 0.999


@pytest.mark.parametrize("name,T", [("quadratic", 100), ("linear", 0), ("cosine", -3)])
def test_bad_schedule_or_timesteps_raise(name, T):
    with pytest.raises(ValueError) as err:
        make_betas(name, T)
    if name == "quadratic":
        assert "linear" in str(err.value) and "cosine" in str(err.value)
    else:
        assert "timesteps" in str(err.value)


def test_linear_schedule_refuses_betas_of_one_or_more():
    with pytest.raises(ValueError, match="cosine"):
        make_betas("linear", 10)  # ends at 0.02 * 100 = 2
    with pytest.raises(ValueError):
        DiffusionSchedule(torch.tensor([0.1, 1.0]))


def test_unknown_prediction_or_variance_raise(sched50):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eps, x0, v"):
        sched50.predict_x0(x, x, 3, "score")
    with pytest.raises(ValueError, match="eps, x0, v"):
        sched50.target(x, x, 3, "noise")
    with pytest.raises(ValueError, match="beta, beta_tilde"):
        sched50.p_mean_variance(x, x, 3, "eps", variance="learned")


# ----------------------------------------------------------------------------------------------
# forward process q
# ----------------------------------------------------------------------------------------------


def test_q_sample_statistics_match_closed_form(sched50):
    _, alpha_bars = loop_alphas(sched50.betas.tolist())
    x0 = torch.tensor([-0.8, 0.1, 0.9], dtype=torch.float64)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    for t in (0, 10, 49):
        noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
        xt = sched50.q_sample(x0.expand(n, 3), t, noise)
        ab = alpha_bars[t]
        assert xt.mean(0).tolist() == pytest.approx((math.sqrt(ab) * x0).tolist(), abs=0.01)
        assert xt.var(0).tolist() == pytest.approx([1.0 - ab] * 3, abs=0.01)


def test_stepwise_forward_process_matches_closed_form(sched50):
    betas = sched50.betas.tolist()
    x0 = torch.tensor([0.7, -0.4], dtype=torch.float64)
    n, k = 200_000, 30
    g = torch.Generator().manual_seed(1)
    x = x0.expand(n, 2).clone()
    for t in range(k + 1):  # apply q(x_t | x_{t-1}) for code steps 0..k
        x = math.sqrt(1 - betas[t]) * x + math.sqrt(betas[t]) * torch.randn(
            n, 2, generator=g, dtype=torch.float64
        )
    closed = sched50.q_sample(x0.expand(n, 2), k, torch.randn(n, 2, generator=g, dtype=x.dtype))
    _, alpha_bars = loop_alphas(betas)
    mean, var = (math.sqrt(alpha_bars[k]) * x0).tolist(), [1 - alpha_bars[k]] * 2
    for sample in (x, closed):
        assert sample.mean(0).tolist() == pytest.approx(mean, abs=0.01)
        assert sample.var(0).tolist() == pytest.approx(var, abs=0.01)


def test_q_sample_uses_each_images_own_timestep(sched50):
    x0 = torch.randn(4, 1, 2, 2)
    noise = torch.randn(4, 1, 2, 2)
    t = torch.tensor([0, 7, 23, 49])
    xt = sched50.q_sample(x0, t, noise)
    _, alpha_bars = loop_alphas(sched50.betas.tolist())
    for i, ti in enumerate(t.tolist()):
        ab = alpha_bars[ti]
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        torch.testing.assert_close(xt[i], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_results_come_back_in_the_input_dtype(sched50, dtype):
    x0 = torch.rand(3, 4, dtype=dtype) * 2 - 1
    noise = torch.randn(3, 4, dtype=dtype)
    t = torch.tensor([1, 20, 40])
    xt = sched50.q_sample(x0, t, noise)
    assert xt.dtype == dtype
    mean, var, log_var, pred_x0 = sched50.p_mean_variance(noise, xt, t)
    assert {mean.dtype, var.dtype, log_var.dtype, pred_x0.dtype} == {dtype}
    ref = sched50.q_sample(x0.double(), t, noise.double())
    torch.testing.assert_close(
        xt.double(), ref, atol=0.02 if dtype == torch.bfloat16 else 1e-6, rtol=0
    )


def test_schedule_stays_usable_for_training_after_inference_mode():
    # Lightning runs validation (sampling, under inference_mode) before training; coefficients
    # cached or built there must not be inference tensors, which autograd refuses to save.
    s = DiffusionSchedule.from_name("linear", 50)
    ddim_sample(lambda x, t: x, (2, 3), s, steps=5)
    with torch.inference_mode():
        built_inside = DiffusionSchedule.from_name("linear", 50)
    assert not built_inside.alpha_bars.is_inference()
    xt, t = torch.randn(2, 3), torch.tensor([3, 4])
    for sched in (s, built_inside):
        for dtype in (torch.float32, torch.float64):
            for prediction in ("eps", "x0", "v"):
                out = torch.randn(2, 3, dtype=dtype, requires_grad=True)
                for t_arg in (t, 7):
                    x0 = sched.predict_x0(out, xt.to(dtype), t_arg, prediction)
                    eps = sched.predict_eps(out, xt.to(dtype), t_arg, prediction)
                    (x0.square().sum() + eps.square().sum()).backward()
                    assert out.grad is not None and torch.isfinite(out.grad).all()


# ----------------------------------------------------------------------------------------------
# posterior q(x_{t-1} | x_t, x0)
# ----------------------------------------------------------------------------------------------


def test_posterior_matches_paper_formulas(sched50):
    betas = sched50.betas.tolist()
    alphas, alpha_bars = loop_alphas(betas)
    x0, xt = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    t = torch.arange(50)
    mean, var, log_var = sched50.q_posterior(x0, xt, t)
    for i in range(50):
        ab, ab_prev = alpha_bars[i], (alpha_bars[i - 1] if i > 0 else 1.0)
        # Ho et al. eq. 7
        expected_mean = (math.sqrt(ab_prev) * betas[i] / (1 - ab)) * x0[i] + (
            math.sqrt(alphas[i]) * (1 - ab_prev) / (1 - ab)
        ) * xt[i]
        expected_var = (1 - ab_prev) / (1 - ab) * betas[i]
        torch.testing.assert_close(mean[i], expected_mean)
        assert var[i].item() == pytest.approx(expected_var, rel=1e-10, abs=1e-300)
        if i > 0:
            assert log_var[i].item() == pytest.approx(math.log(expected_var), rel=1e-10)
    # At t = 0 the posterior is a point mass at x0; the log-variance is clipped to step 1's.
    torch.testing.assert_close(mean[0], x0[0])
    assert log_var[0].item() == pytest.approx(log_var[1].item())


@pytest.mark.parametrize("t", [1, 5, 30, 49])
def test_posterior_is_bayes_rule_by_numerical_integration(sched50, t):
    betas = sched50.betas.tolist()
    _, alpha_bars = loop_alphas(betas)
    x0_val, xt_val = 0.6, -0.3
    ab_prev = alpha_bars[t - 1]
    # p(x_{t-1} | x0) * p(x_t | x_{t-1}) on a dense grid, normalised numerically.
    grid = torch.linspace(-4, 4, 800_001, dtype=torch.float64)
    log_prior = -((grid - math.sqrt(ab_prev) * x0_val) ** 2) / (2 * (1 - ab_prev))
    log_lik = -((xt_val - math.sqrt(1 - betas[t]) * grid) ** 2) / (2 * betas[t])
    w = torch.softmax(log_prior + log_lik, dim=0)
    num_mean = (w * grid).sum().item()
    num_var = (w * (grid - num_mean) ** 2).sum().item()

    mean, var, _ = sched50.q_posterior(
        torch.tensor([[x0_val]], dtype=torch.float64),
        torch.tensor([[xt_val]], dtype=torch.float64),
        t,
    )
    assert mean.item() == pytest.approx(num_mean, abs=1e-7)
    assert var.item() == pytest.approx(num_var, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# prediction targets
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_and_predictions_round_trip(sched50, prediction):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(50, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(50, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.arange(50)
    xt = sched50.q_sample(x0, t, noise)
    target = sched50.target(x0, noise, t, prediction)
    torch.testing.assert_close(sched50.predict_x0(target, xt, t, prediction), x0)
    torch.testing.assert_close(sched50.predict_eps(target, xt, t, prediction), noise)


def test_v_target_is_salimans_ho_definition(sched50):
    _, alpha_bars = loop_alphas(sched50.betas.tolist())
    x0, noise = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    ab = alpha_bars[17]
    expected = math.sqrt(ab) * noise - math.sqrt(1 - ab) * x0
    torch.testing.assert_close(sched50.target(x0, noise, 17, "v"), expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_predicted_x0_and_eps_reconstruct_xt(sched50, prediction):
    # Whatever the network outputs, the implied (x0, eps) pair must lie on x_t's line.
    out = torch.randn(50, 4, dtype=torch.float64)
    xt = torch.randn(50, 4, dtype=torch.float64)
    t = torch.arange(50)
    x0 = sched50.predict_x0(out, xt, t, prediction)
    eps = sched50.predict_eps(out, xt, t, prediction)
    torch.testing.assert_close(sched50.q_sample(x0, t, eps), xt)


# ----------------------------------------------------------------------------------------------
# reverse process p_theta
# ----------------------------------------------------------------------------------------------


def test_p_mean_is_ho_eq_11_for_eps_prediction(sched50):
    betas = sched50.betas.tolist()
    alphas, alpha_bars = loop_alphas(betas)
    eps = torch.randn(50, 3, dtype=torch.float64)
    xt = torch.randn(50, 3, dtype=torch.float64)
    mean, _, _, _ = sched50.p_mean_variance(eps, xt, torch.arange(50), "eps", clip_x0=False)
    for i in range(50):
        expected = (xt[i] - betas[i] / math.sqrt(1 - alpha_bars[i]) * eps[i]) / math.sqrt(alphas[i])
        torch.testing.assert_close(mean[i], expected)


def test_p_variance_choices(sched50):
    betas = sched50.betas.tolist()
    _, alpha_bars = loop_alphas(betas)
    beta_tilde = [0.0] + [
        (1 - alpha_bars[i - 1]) / (1 - alpha_bars[i]) * betas[i] for i in range(1, 50)
    ]
    x = torch.zeros(50, 1, dtype=torch.float64)
    t = torch.arange(50)
    _, var_b, logvar_b, _ = sched50.p_mean_variance(x, x, t, variance="beta")
    _, var_bt, logvar_bt, _ = sched50.p_mean_variance(x, x, t, variance="beta_tilde")
    assert var_b[1:, 0].tolist() == pytest.approx(betas[1:], rel=1e-12)
    assert var_bt[1:, 0].tolist() == pytest.approx(beta_tilde[1:], rel=1e-10)
    # t = 0: beta_tilde is 0 there, both choices use step 1's beta_tilde (reference-code choice)
    assert var_b[0].item() == pytest.approx(beta_tilde[1], rel=1e-10)
    assert var_bt[0].item() == pytest.approx(beta_tilde[1], rel=1e-10)
    torch.testing.assert_close(logvar_b.exp(), var_b)
    torch.testing.assert_close(logvar_bt.exp(), var_bt)
    assert torch.all(var_bt[1:] < var_b[1:])


def test_clip_x0_clamps_the_prediction(sched50):
    xt = torch.full((1, 4), 3.0)
    eps = torch.full((1, 4), -2.0)  # implies x0 far above 1
    _, _, _, raw = sched50.p_mean_variance(eps, xt, 25, clip_x0=False)
    _, _, _, clipped = sched50.p_mean_variance(eps, xt, 25, clip_x0=True)
    assert raw.min().item() > 1.0
    assert torch.all(clipped == 1.0)


# ----------------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,steps", [(1000, 50), (1000, 1000), (50, 7), (50, 1), (37, 36)])
def test_ddim_timesteps_are_evenly_spaced_and_span_the_range(T, steps):
    seq = ddim_timesteps(T, steps)
    assert len(seq) == steps
    assert seq[0] == T - 1
    assert all(a > b for a, b in zip(seq, seq[1:], strict=False))
    if steps > 1:
        assert seq[-1] == 0
        gaps = [a - b for a, b in zip(seq, seq[1:], strict=False)]
        assert max(gaps) - min(gaps) <= 1


@pytest.mark.parametrize("steps", [0, 51, -1])
def test_ddim_steps_out_of_range_raise(sched50, steps):
    with pytest.raises(ValueError, match="1 <= steps <= T = 50"):
        ddim_sample(lambda x, t: x, (1, 1), sched50, steps=steps)


@pytest.mark.parametrize("t,t_prev,eta", [(30, 29, 0.0), (30, 10, 0.5), (49, 0, 1.0), (5, -1, 0.7)])
def test_ddim_step_matches_eq_12(sched50, t, t_prev, eta):
    _, alpha_bars = loop_alphas(sched50.betas.tolist())
    g = torch.Generator().manual_seed(4)
    xt, eps, z = (torch.randn(3, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    ab_t = alpha_bars[t]
    ab_p = alpha_bars[t_prev] if t_prev >= 0 else 1.0
    x0_pred = (xt - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    sigma = eta * math.sqrt((1 - ab_p) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_p)
    expected = math.sqrt(ab_p) * x0_pred + math.sqrt(1 - ab_p - sigma**2) * eps + sigma * z
    x_prev, x0 = ddim_step(eps, xt, t, t_prev, sched50, eta=eta, clip_x0=False, noise=z)
    torch.testing.assert_close(x_prev, expected)
    torch.testing.assert_close(x0, x0_pred)
    assert ddim_sigma(sched50, t, t_prev, eta) == pytest.approx(sigma, rel=1e-12, abs=1e-300)
    if t_prev == -1:
        torch.testing.assert_close(x_prev, x0_pred)


def test_ddim_sigma_at_eta_1_is_ddpm_posterior_std(sched50):
    betas = sched50.betas.tolist()
    _, alpha_bars = loop_alphas(betas)
    for t in range(1, 50):
        beta_tilde = (1 - alpha_bars[t - 1]) / (1 - alpha_bars[t]) * betas[t]
        assert ddim_sigma(sched50, t, t - 1, 1.0) == pytest.approx(math.sqrt(beta_tilde), rel=1e-10)


def toy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, t-dependent, nonlinear stand-in for a network."""
    return torch.tanh(0.8 * x) + 0.01 * t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def test_ddim_with_eta_1_and_all_steps_is_ddpm_with_beta_tilde(sched50):
    # Same schedule, same noise draws in the same order: the two chains must coincide.
    kw = dict(clip_x0=True, dtype=torch.float64)
    ddpm = ddpm_sample(
        toy_denoiser,
        (3, 1, 4, 4),
        sched50,
        variance="beta_tilde",
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    ddim = ddim_sample(
        toy_denoiser,
        (3, 1, 4, 4),
        sched50,
        steps=50,
        eta=1.0,
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    torch.testing.assert_close(ddim, ddpm)


def test_ddim_eta_0_is_deterministic_given_x_T(sched50):
    x_T = torch.randn(2, 1, 4, 4)
    a = ddim_sample(
        toy_denoiser, None, sched50, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(0)
    )
    b = ddim_sample(
        toy_denoiser,
        x_T.shape,
        sched50,
        steps=10,
        x_T=x_T,
        generator=torch.Generator().manual_seed(123),
    )
    assert torch.equal(a, b)
    c = ddim_sample(
        toy_denoiser,
        None,
        sched50,
        steps=10,
        eta=1.0,
        x_T=x_T,
        generator=torch.Generator().manual_seed(123),
    )
    assert not torch.equal(a, c)


def test_ddim_follows_the_exact_affine_map_for_gaussian_data():
    # With the exact eps for N(mu, sd^2) data every DDIM step is affine in x_t:
    # x_prev - a' mu = k (x_t - a mu). Compose the k's here by hand and compare per sample.
    s = DiffusionSchedule.from_name("linear", 1000)
    mu, sd = 0.3, 0.2
    ab = s.alpha_bars.tolist()
    seq = ddim_timesteps(1000, 10)
    gain = 1.0
    for t, tp in zip(seq, seq[1:] + [-1], strict=True):
        a2, ap2 = ab[t], (ab[tp] if tp >= 0 else 1.0)
        var_xt = a2 * sd**2 + 1 - a2
        k = (math.sqrt(ap2 * a2) * sd**2 + math.sqrt((1 - ap2) * (1 - a2))) / var_xt
        gain *= k
    x_T = torch.randn(64, 1, dtype=torch.float64)
    out = ddim_sample(gaussian_oracle(s, mu, sd), None, s, steps=10, x_T=x_T, clip_x0=False)
    expected = mu + gain * (x_T - math.sqrt(ab[-1]) * mu)
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------------------------
# samplers: shapes, ranges, determinism, trajectories, oracles
# ----------------------------------------------------------------------------------------------


def explosive(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps prediction whose implied x0 is far outside [-1, 1]."""
    return -3.0 * x - 2.0


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_shape_range_and_clipping(sched50, sampler):
    def run(clip):
        g = torch.Generator().manual_seed(0)
        if sampler == "ddpm":
            return ddpm_sample(explosive, (4, 3, 5, 5), sched50, clip_x0=clip, generator=g)
        return ddim_sample(explosive, (4, 3, 5, 5), sched50, steps=8, clip_x0=clip, generator=g)

    clipped, raw = run(True), run(False)
    assert clipped.shape == (4, 3, 5, 5) and clipped.dtype == torch.float32
    assert clipped.min() >= -1.0 and clipped.max() <= 1.0
    assert raw.abs().max() > 1.0  # so the clip above is doing something
    assert not clipped.requires_grad


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_are_deterministic_under_a_generator(sched50, sampler):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        if sampler == "ddpm":
            return ddpm_sample(toy_denoiser, (2, 1, 3, 3), sched50, generator=g)
        return ddim_sample(toy_denoiser, (2, 1, 3, 3), sched50, steps=5, eta=0.5, generator=g)

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_ddpm_trajectory_holds_requested_latents(sched50):
    x_T = torch.randn(2, 1, 3, 3)
    out, traj = ddpm_sample(
        toy_denoiser,
        None,
        sched50,
        x_T=x_T,
        return_trajectory_at=[49, 25, 0],
        generator=torch.Generator().manual_seed(0),
    )
    assert sorted(traj) == [0, 25, 49]
    assert torch.equal(traj[49], x_T)
    assert not torch.equal(traj[25], traj[49])
    assert out.shape == x_T.shape
    with pytest.raises(ValueError, match="never visits"):
        ddpm_sample(toy_denoiser, (1, 1), sched50, return_trajectory_at=[50])


def test_ddim_trajectory_only_accepts_visited_steps(sched50):
    seq = ddim_timesteps(50, 5)
    _, traj = ddim_sample(toy_denoiser, (1, 2), sched50, steps=5, return_trajectory_at=seq)
    assert sorted(traj) == sorted(seq)
    with pytest.raises(ValueError, match="ddim_timesteps"):
        ddim_sample(toy_denoiser, (1, 2), sched50, steps=5, return_trajectory_at=[seq[1] + 1])


def test_x_T_shape_mismatch_raises(sched50):
    with pytest.raises(ValueError, match="does not match"):
        ddpm_sample(toy_denoiser, (2, 2), sched50, x_T=torch.zeros(3, 2))


def test_oracle_sampler_recovers_a_point_mass(sched50):
    c = torch.tensor([[-0.5, 0.25], [0.75, -1.0]]).reshape(1, 1, 2, 2)
    oracle = point_oracle(sched50, c)
    for clip in (True, False):
        x = ddpm_sample(
            oracle, (16, 1, 2, 2), sched50, clip_x0=clip, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)
        x = ddim_sample(oracle, (16, 1, 2, 2), sched50, steps=5, clip_x0=clip)
        torch.testing.assert_close(x, c.expand_as(x), atol=1e-4, rtol=0)


def test_oracle_ddpm_sampler_recovers_a_gaussian():
    s = DiffusionSchedule.from_name("linear", 1000)
    mu, sd = 0.3, 0.2
    x = ddpm_sample(
        gaussian_oracle(s, mu, sd),
        (20_000, 1),
        s,
        clip_x0=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.mean().item() == pytest.approx(mu, abs=0.01)
    assert x.std().item() == pytest.approx(sd, rel=0.03)


# ----------------------------------------------------------------------------------------------
# variational bound
# ----------------------------------------------------------------------------------------------


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    m1, m2, lv1, lv2 = (torch.randn(100, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()),
        torch.distributions.Normal(m2, (0.5 * lv2).exp()),
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    assert normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discretized_likelihood_is_a_distribution_over_256_bins(dtype):
    levels = torch.arange(256, dtype=dtype) / 127.5 - 1  # the 8-bit grid in [-1, 1]
    means = torch.tensor([-1.3, -0.999, -0.2, 0.0, 0.51, 1.0, 2.0], dtype=dtype)
    log_scales = torch.tensor([-6.0, -4.0, -2.0, 0.0, 1.0], dtype=dtype)
    m, ls, x = torch.meshgrid(means, log_scales, levels, indexing="ij")
    ll = discretized_gaussian_log_likelihood(x, m, ls)
    assert torch.all(ll <= 0)
    torch.testing.assert_close(ll.exp().sum(-1), torch.ones_like(m[..., 0]), atol=1e-5, rtol=0)


def test_discretized_likelihood_matches_erfc_and_is_stable_in_the_tails():
    half = 1 / 255
    # (level k, mean, std): an ordinary bin, then bins ~7 and ~9 standard deviations out in the
    # upper and lower tails, where Phi(hi) - Phi(lo) computed naively in float32 would be 0.
    cases = [(127, 0.3, 0.1), (218, 0.0, 0.1), (63, 0.4, 0.1)]
    for k, mean, scale in cases:
        x = k / 127.5 - 1
        lo, hi = (x - mean - half) / scale, (x - mean + half) / scale
        r2 = math.sqrt(2)
        if lo > 0:  # upper tail: 1 - Phi(z) = erfc(z / sqrt 2) / 2
            p = 0.5 * (math.erfc(lo / r2) - math.erfc(hi / r2))
        else:  # Phi(z) = erfc(-z / sqrt 2) / 2
            p = 0.5 * (math.erfc(-hi / r2) - math.erfc(-lo / r2))
        got = discretized_gaussian_log_likelihood(
            torch.tensor(x, dtype=torch.float32),
            torch.tensor(mean, dtype=torch.float32),
            torch.tensor(math.log(scale), dtype=torch.float32),
        )
        assert got.item() == pytest.approx(math.log(p), rel=1e-4)
        assert math.log(p) < -20 or k == 127


def _point_mass_terms(T: int, variance: str, chunk: int = 1):
    s = DiffusionSchedule.from_name("linear", T)
    # 8-bit levels, including both edges
    c = (torch.tensor([0, 60, 128, 255], dtype=torch.float64) / 127.5 - 1).reshape(1, 1, 2, 2)
    x0 = c.expand(3, 1, 2, 2)
    terms = vlb_terms(
        point_oracle(s, c),
        x0,
        s,
        variance=variance,
        t_batch_chunk=chunk,
        generator=torch.Generator().manual_seed(0),
    )
    return s, c, terms


def test_bound_for_point_mass_oracle_matches_closed_form():
    T = 1000
    s, c, terms = _point_mass_terms(T, "beta", chunk=250)
    betas = s.betas.tolist()
    _, ab = loop_alphas(betas)
    D = c.numel()
    beta_tilde = [(1 - ab[t - 1]) / (1 - ab[t]) * betas[t] for t in range(1, T)]

    # The oracle's mean equals the posterior mean, so each KL is the variance mismatch only.
    kl = [
        0.5 * D * (math.log(b / bt) + bt / b - 1)
        for b, bt in zip(betas[1:], beta_tilde, strict=True)
    ]
    assert terms.kl_nats.shape == (3, T - 1)
    torch.testing.assert_close(
        terms.kl_nats, torch.tensor(kl).expand(3, -1).double(), rtol=1e-6, atol=1e-9
    )
    # Decoder: mean exactly c, std sqrt(beta_tilde_1) (the t = 0 convention); edge bins open.
    sigma, half = math.sqrt(beta_tilde[0]), 1 / 255
    nll = 0.0
    for v in c.flatten().tolist():
        if v in (-1.0, 1.0):
            nll -= math.log(gaussian_cdf(half / sigma))
        else:
            nll -= math.log(gaussian_cdf(half / sigma) - gaussian_cdf(-half / sigma))
    torch.testing.assert_close(terms.decoder_nats, torch.full((3,), nll, dtype=torch.float64))
    # Prior: KL(N(sqrt(ab_T) c, 1 - ab_T) || N(0, 1)) per dimension, ~0 for a long schedule.
    a2 = ab[-1]
    prior = sum(0.5 * (a2 * v**2 + (1 - a2) - 1 - math.log(1 - a2)) for v in c.flatten().tolist())
    assert terms.prior_nats.tolist() == pytest.approx([prior] * 3, rel=1e-6)
    assert terms.prior_nats.max() < 1e-3
    # Parts add up, and bits/dim is nats / (D ln 2).
    total = terms.prior_nats + terms.kl_sum_nats + terms.decoder_nats
    torch.testing.assert_close(terms.total_nats, total)
    torch.testing.assert_close(terms.bits_per_dim, total / (D * math.log(2)))


def test_bound_kl_terms_vanish_for_the_oracle_with_beta_tilde():
    _, _, terms = _point_mass_terms(100, "beta_tilde")
    assert terms.kl_nats.abs().max() < 1e-6


def test_bound_prefers_the_oracle_over_a_bad_predictor():
    s = DiffusionSchedule.from_name("linear", 200)
    c = (torch.tensor([3, 100, 200, 250], dtype=torch.float32) / 127.5 - 1).reshape(1, 1, 2, 2)
    x0 = c.expand(4, 1, 2, 2)
    oracle = point_oracle(s, c)
    wrong_point = point_oracle(s, -c)
    zero = lambda x, t: torch.zeros_like(x)
    bpd = {
        name: vlb_terms(fn, x0, s, generator=torch.Generator().manual_seed(0)).bits_per_dim
        for name, fn in [("oracle", oracle), ("wrong", wrong_point), ("zero", zero)]
    }
    assert torch.all(bpd["oracle"] < bpd["zero"])
    assert torch.all(bpd["oracle"] < bpd["wrong"])
    # Even the exact denoiser pays for the decoder's Gaussian blur, so the bound stays > 0.
    assert torch.all(bpd["oracle"] > 0)


def test_bound_does_not_depend_on_the_chunking():
    def run(chunk):
        s = DiffusionSchedule.from_name("cosine", 30)
        x0 = torch.randint(0, 256, (2, 1, 3, 3)).float() / 127.5 - 1
        return vlb_terms(
            toy_denoiser, x0, s, t_batch_chunk=chunk, generator=torch.Generator().manual_seed(9)
        )

    torch.manual_seed(0)
    a = run(1)
    torch.manual_seed(0)
    b = run(7)
    torch.testing.assert_close(a.terms_nats, b.terms_nats)
    torch.testing.assert_close(a.prior_nats, b.prior_nats)
    with pytest.raises(ValueError):
        vlb_terms(
            toy_denoiser,
            torch.zeros(1, 1),
            DiffusionSchedule.from_name("cosine", 5),
            t_batch_chunk=0,
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_work_without_moving_the_schedule(sched50):
    x0 = torch.rand(4, 1, 8, 8, device="cuda") * 2 - 1
    t = torch.randint(0, 50, (4,), device="cuda")
    noise = torch.randn_like(x0)
    xt = sched50.q_sample(x0, t, noise)
    assert xt.device.type == "cuda"
    torch.testing.assert_close(xt.cpu(), sched50.q_sample(x0.cpu(), t.cpu(), noise.cpu()))
    g = torch.Generator(device="cuda").manual_seed(0)
    out = ddim_sample(
        toy_denoiser, (2, 1, 8, 8), sched50, steps=5, eta=1.0, generator=g, device="cuda"
    )
    assert out.device.type == "cuda"
    terms = vlb_terms(toy_denoiser, x0, sched50, t_batch_chunk=10)
    assert terms.bits_per_dim.device.type == "cuda"
