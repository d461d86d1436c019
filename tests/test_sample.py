"""Sampling from trained runs (genlab.sample.run and `python sample.py`): every task on tiny real
AE, VAE and CVAE runs, the picture geometry, seeds, never overwriting, the anomaly AUROC, and a
clear error with nothing written for every kind of bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures import CONF_DIR, REPO, write_inverted_mnist_family
from PIL import Image

from genlab import GenlabError
from genlab.models import MODEL_CLASSES
from genlab.runs import load_run
from genlab.sample import rank_auroc, run

PAD, SIDE = 2, 28  # make_grid padding, image side: a grid of c columns is c * 30 + 2 wide
CVAE_K = 4


def px(cells: int) -> int:
    return cells * (SIDE + PAD) + PAD


def _train(data_root, run_dir, *overrides, mlp=True):
    from fixtures import compose_run

    from genlab.training import run as train

    mlp_size = ["model.mlp.hidden=[64]"] if mlp else []  # a DDPM has no MLP
    train(compose_run(data_root, run_dir, *mlp_size, "test=false", "save_images=false", *overrides))
    return run_dir


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """One tiny trained run per model type (1 epoch), shared by the whole module."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "ae": _train(data_root, root / "ae", "model=ae", "data=mnist", "model.latent_dim=2"),
        "vae": _train(data_root, root / "vae", "model=vae", "model.latent_dim=2"),
        "cvae": _train(
            data_root, root / "cvae", "model=cvae", "model.arch=mlp", f"model.latent_dim={CVAE_K}"
        ),
    }


def sample(run_dir, task, out_dir, **options):
    where = {"out_dir": str(out_dir)} if out_dir is not None else {}
    return run({"run": str(run_dir), "task": task, "device": "cpu", **where, **options})


def size(path):
    with Image.open(path) as image:
        return image.size


def pixels(path):
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


# -- every task, its files and its geometry (width, height) -------------------------------------
GEOMETRY = [
    ("vae", "samples", {"n": 4}, (px(4), px(4))),
    ("cvae", "samples", {"n": 3}, (px(10), px(3))),  # n rows, one class per column
    ("ae", "reconstructions", {"n": 3}, (px(3), px(6))),
    ("cvae", "reconstructions", {"n": 2}, (px(2), px(4))),
    ("vae", "interpolate", {"n": 3, "frames": 5, "mode": "slerp"}, (px(5), px(3))),
    ("ae", "interpolate", {"n": 2, "frames": 4}, (px(4), px(2))),
    ("cvae", "interpolate", {"n": 2, "frames": 3, "mode": "slerp"}, (px(3), px(2))),
    ("ae", "manifold", {"n": 5}, (px(5), px(5))),
    ("vae", "manifold", {"n": 6}, (px(6), px(6))),
    ("cvae", "traverse", {"n": 7}, (px(7), px(CVAE_K))),
    ("ae", "traverse", {"n": 5}, (px(5), px(2))),
    ("cvae", "classes", {"n": 3}, (px(10), px(3))),
    ("ae", "latent_scatter", {}, (640, 520)),
    ("cvae", "latent_scatter", {"max_images": 50}, (640, 520)),
]


@pytest.mark.parametrize(("model", "task", "options", "expected"), GEOMETRY)
def test_task_writes_png_of_the_grid_geometry(runs, tmp_path, model, task, options, expected):
    written = sample(runs[model], task, tmp_path, **options)
    assert [p.name for p in written] == [f"{task}.png"]
    assert size(written[0]) == expected
    assert [p.name for p in tmp_path.iterdir()] == [f"{task}.png"]  # no temp files left


def test_default_out_dir_is_the_runs_samples_folder(runs):
    written = sample(runs["vae"], "samples", None, n=2)
    assert written == [runs["vae"] / "samples" / "samples.png"]
    assert size(written[0]) == (px(2), px(2))


def test_pca_axes_for_a_latent_above_2d(runs, tmp_path):
    # The scatter of a k=4 CVAE is a projection: the axis labels must say so.
    from matplotlib.figure import Figure

    captured = {}
    original = Figure.savefig

    def spy(fig, *args, **kwargs):
        captured["labels"] = (fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel())
        return original(fig, *args, **kwargs)

    Figure.savefig = spy
    try:
        sample(runs["cvae"], "latent_scatter", tmp_path, max_images=40)
    finally:
        Figure.savefig = original
    assert all(label.startswith("PCA") for label in captured["labels"])


def test_manifold_puts_the_smallest_codes_bottom_left(runs, tmp_path):
    [path] = sample(runs["vae"], "manifold", tmp_path, n=4)
    loaded = load_run(runs["vae"], MODEL_CLASSES, "cpu")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.95]))
    grid = pixels(path)[..., 0].float() / 255
    corners = {"bottom_left": (q[0], q[0], 3, 0), "top_right": (q[1], q[1], 0, 3)}
    for z1, z2, row, col in corners.values():
        expected = loaded.model.decode_images(torch.tensor([[z1, z2]]))[0, 0].detach()
        top, left = PAD + row * (SIDE + PAD), PAD + col * (SIDE + PAD)
        tile = grid[top : top + SIDE, left : left + SIDE]
        assert (tile - expected).abs().max() <= 1 / 255 + 1e-6


# -- seeds and files ------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_picture(runs, tmp_path):
    first = sample(runs["vae"], "samples", tmp_path, n=4)[0]
    again = sample(runs["vae"], "samples", tmp_path, n=4)[0]
    other = sample(runs["vae"], "samples", tmp_path, n=4, seed=1)[0]
    assert (first.name, again.name, other.name) == ("samples.png", "samples-1.png", "samples-2.png")
    assert first.read_bytes() == again.read_bytes()
    assert not torch.equal(pixels(first), pixels(other))
    # tasks that pick test images pick them by seed too
    a = sample(runs["cvae"], "interpolate", tmp_path, n=2, frames=3)[0]
    b = sample(runs["cvae"], "interpolate", tmp_path, n=2, frames=3)[0]
    c = sample(runs["cvae"], "interpolate", tmp_path, n=2, frames=3, seed=5)[0]
    assert a.read_bytes() == b.read_bytes() and not torch.equal(pixels(a), pixels(c))


def test_vae_and_cvae_samples_differ(runs, tmp_path):
    vae = sample(runs["vae"], "samples", tmp_path / "v", n=4)[0]
    cvae = sample(runs["cvae"], "samples", tmp_path / "c", n=4, label=0)[0]  # n x n of class 0
    assert size(vae) == size(cvae) and not torch.equal(pixels(vae), pixels(cvae))


def test_overwrite_replaces_in_place(runs, tmp_path):
    sample(runs["vae"], "samples", tmp_path, n=2)
    written = sample(runs["vae"], "samples", tmp_path, n=3, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]
    assert size(written[0]) == (px(3), px(3))


# -- anomaly --------------------------------------------------------------------------------------
def test_rank_auroc_is_the_exact_area_with_ties():
    from torchmetrics.classification import BinaryAUROC

    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 6, (200,), generator=gen).double()  # many ties on purpose
    pos = torch.randint(2, 9, (150,), generator=gen).double()
    metric = BinaryAUROC()(torch.cat([neg, pos]), torch.cat([torch.zeros(200), torch.ones(150)]))
    assert rank_auroc(neg, pos) == pytest.approx(float(metric), abs=1e-6)
    assert rank_auroc(torch.zeros(3), torch.ones(4)) == 1.0
    assert rank_auroc(torch.ones(3), torch.ones(4)) == 0.5


@pytest.mark.parametrize("model", ["ae", "cvae"])
def test_anomaly_separates_another_distribution(runs, tmp_path, capsys, model):
    other = tmp_path / "inverted"
    write_inverted_mnist_family(other / "FashionMNIST" / "raw")
    written = sample(
        runs[model],
        "anomaly",
        tmp_path / "out",
        anomaly_data="fashion_mnist",
        anomaly_data_dir=str(other),
    )
    assert [p.name for p in written] == ["anomaly-fashion_mnist.png", "anomaly-fashion_mnist.json"]
    summary = json.loads(written[1].read_text())
    assert summary["auroc"] > 0.9
    assert summary["in_distribution"]["n"] == summary["out_of_distribution"]["n"] == 96
    assert summary["mean_score_out"] > summary["mean_score_in"]
    assert f"AUROC {summary['auroc']:.4f}" in capsys.readouterr().out
    assert size(written[0]) == (640, 420)


def test_dataset_option_reads_another_dataset_inside_and_outside_hydra(runs, tmp_path):
    # The fixture's MNIST and Fashion-MNIST files are identical, so the pictures must be too;
    # inside `python sample.py` the dataset is composed through the app's own Hydra instance.
    from hydra import initialize_config_dir

    options = {"n": 2, "dataset": "fashion_mnist"}
    outside = sample(runs["ae"], "reconstructions", tmp_path / "a", **options)[0]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        inside = sample(runs["ae"], "reconstructions", tmp_path / "b", **options)[0]
    own = sample(runs["ae"], "reconstructions", tmp_path / "c", n=2)[0]
    assert outside.read_bytes() == inside.read_bytes() == own.read_bytes()


# -- the command line -----------------------------------------------------------------------------
def _cli(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "sample.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_option_can_be_set_on_the_command_line():
    # A key named like a config group of conf/ (data=, model=) would be read as a group choice.
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    keys = [k for k in OmegaConf.load(CONF_DIR / "sample.yaml") if k not in ("defaults", "hydra")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"{k}=7" for k in keys])
    assert all(cfg[k] == 7 for k in keys)


def test_cli_writes_samples(runs, tmp_path):
    out = tmp_path / "cli"
    result = _cli(f"run={runs['vae']}", "task=samples", "n=4", f"out_dir={out}", "device=cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out / 'samples.png'}" in result.stdout
    assert size(out / "samples.png") == (px(4), px(4))
    assert not (REPO / ".hydra").exists() and not (REPO / "sample.log").exists()


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    result = _cli(f"run={tmp_path}", "task=samples")
    assert result.returncode == 2
    assert result.stderr.startswith(f"genlab: error: run={tmp_path} holds no checkpoint")
    assert "Traceback" not in result.stderr


# -- bad input: a clear GenlabError, nothing written ---------------------------------------------
def test_a_run_of_an_older_genlab_still_samples(runs, tmp_path):
    """config.yaml of a run trained before model.lr_schedule became the scheduler= group still
    carries the retired key: sample.py reads the run as it is (the key said how it trained)."""
    from omegaconf import OmegaConf

    older = tmp_path / "older"
    shutil.copytree(runs["vae"], older, ignore=shutil.ignore_patterns("samples"))
    cfg = OmegaConf.load(older / "config.yaml")
    cfg.model.lr_schedule = "cosine"
    OmegaConf.save(cfg, older / "config.yaml")
    written = sample(older, "samples", tmp_path / "out", n=2)
    assert pixels(written[0]).float().std() > 0


def _forged_checkpoint(path, name):
    torch.save({"state_dict": {}, "hyper_parameters": {"name": name}}, path)
    return path


def _broken_run(runs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(runs["vae"], broken, ignore=shutil.ignore_patterns("samples"))
    (broken / "config.yaml").write_text("model: {name: vae\ndata: [unclosed\n")
    return broken


BAD = [
    ("no_run", lambda r, t: (t / "empty", "samples", {}), "holds no checkpoint"),
    ("missing", lambda r, t: (t / "nowhere", "samples", {}), "does not exist"),
    (
        "unknown_model",
        lambda r, t: (_forged_checkpoint(t / "gan.ckpt", "gan"), "samples", {}),
        "model of type 'gan'.*known types are ae, vae, cvae",
    ),
    (
        "ae_samples",
        lambda r, t: (r["ae"], "samples", {}),
        "not a generative model.*gaps.*model=vae.*can do: task=reconstructions",
    ),
    (
        "vae_classes",
        lambda r, t: (r["vae"], "classes", {}),
        "task=classes is not available for this vae.*model=cvae.*A vae can do: task=samples",
    ),
    ("n_zero", lambda r, t: (r["vae"], "samples", {"n": 0}), "n=0. n must be an integer >= 1"),
    ("unknown_option", lambda r, t: (r["vae"], "samples", {"m": 3}), "Unknown option 'm'"),
    (
        "manifold_not_2d",
        lambda r, t: (r["cvae"], "manifold", {}),
        f"latent_dim={CVAE_K}. Use task=traverse",
    ),
    ("ae_slerp", lambda r, t: (r["ae"], "interpolate", {"mode": "slerp"}), "use mode=linear"),
    (
        "broken_config",
        lambda r, t: (_broken_run(r, t), "samples", {}),
        r"broken/config.yaml no longer loads",
    ),
    (
        "anomaly_other_shape",
        lambda r, t: (r["ae"], "anomaly", {"anomaly_data": "cifar10"}),
        r"data=cifar10 holds images of shape \[3, 32, 32\] but this ae takes \[1, 28, 28\]",
    ),
    (
        "too_many_images",
        lambda r, t: (r["ae"], "reconstructions", {"n": 10}),
        "needs 100 test images but the test split has 96",
    ),
]


@pytest.mark.parametrize(("case", "make", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_message(runs, tmp_path, case, make, message):
    (tmp_path / "empty").mkdir()
    path, task, options = make(runs, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(GenlabError, match=message):
        sample(path, task, out, **options)
    assert not out.exists()


# -- DDPM -----------------------------------------------------------------------------------------
T, SAMPLE_STEPS = 50, 10
TINY_DDPM = [
    "model=ddpm",
    f"model.timesteps={T}",
    f"model.sample_steps={SAMPLE_STEPS}",
    "model.unet.base_channels=8",
    "model.unet.channel_mults=[1,2]",
    "model.warmup_steps=1",
    "model.test_bpd_images=8",
    "model.bpd_t_chunk=25",
    "model.ema_decay=0.9",
    "data=mnist",
]


@pytest.fixture(scope="module")
def ddpm_runs(data_root, tmp_path_factory):
    """A tiny unconditional and a tiny class-conditional DDPM (1 epoch, EMA on)."""
    root = tmp_path_factory.mktemp("ddpm_runs")
    return {
        "ddpm": _train(data_root, root / "ddpm", *TINY_DDPM, mlp=False),
        "cddpm": _train(data_root, root / "cddpm", *TINY_DDPM, "model.conditional=true", mlp=False),
    }


def tiles(path, rows, cols):
    """The [rows, cols, H, W] grey levels (0..1) of a grid PNG."""
    grid = pixels(path)[..., 0].float() / 255
    out = torch.empty(rows, cols, SIDE, SIDE)
    for r in range(rows):
        for c in range(cols):
            top, left = PAD + r * (SIDE + PAD), PAD + c * (SIDE + PAD)
            out[r, c] = grid[top : top + SIDE, left : left + SIDE]
    return out


DDPM_GEOMETRY = [
    ("ddpm", "samples", {"n": 3}, (px(3), px(3))),
    ("ddpm", "samples", {"n": 2, "sampler": "ddpm"}, (px(2), px(2))),
    ("ddpm", "samples", {"n": 2, "sampler": "ddim", "steps": 4, "eta": 1.0}, (px(2), px(2))),
    ("ddpm", "samples", {"n": 2, "sampler": "dpmpp_2m", "steps": 4}, (px(2), px(2))),
    ("cddpm", "samples", {"n": 2, "label": 3, "guidance_scale": 1.5}, (px(2), px(2))),
    ("ddpm", "interpolate", {"n": 2, "frames": 5}, (px(5), px(2))),
    ("cddpm", "interpolate", {"n": 2, "frames": 3, "mode": "linear"}, (px(3), px(2))),
    ("cddpm", "classes", {"n": 2}, (px(10), px(2))),
    ("ddpm", "interpolate", {"n": 2, "frames": 3, "steps": 4}, (px(3), px(2))),  # 4 DDIM steps
]


@pytest.mark.parametrize(("model", "task", "options", "expected"), DDPM_GEOMETRY)
def test_ddpm_task_writes_png_of_the_grid_geometry(
    ddpm_runs, tmp_path, model, task, options, expected
):
    written = sample(ddpm_runs[model], task, tmp_path, **options)
    assert [p.name for p in written] == [f"{task}.png"]
    assert size(written[0]) == expected
    assert [p.name for p in tmp_path.iterdir()] == [f"{task}.png"]


@pytest.mark.parametrize(
    ("options", "reverse_cols", "forward_cols"),
    [
        ({}, SAMPLE_STEPS + 1, 11),  # 10 of the 10 DDIM steps, + the sample; x_0 + 10 levels
        ({"steps": 4}, 5, 11),  # DDIM visits only 4 timesteps
        ({"sampler": "ddpm", "strip_steps": 3}, 4, 4),
    ],
)
def test_denoise_writes_both_strips_and_never_overwrites(
    ddpm_runs, tmp_path, options, reverse_cols, forward_cols
):
    first = sample(ddpm_runs["ddpm"], "denoise", tmp_path, n=2, **options)
    again = sample(ddpm_runs["ddpm"], "denoise", tmp_path, n=2, **options)
    assert [p.name for p in first] == ["denoise_reverse.png", "denoise_forward.png"]
    assert [p.name for p in again] == ["denoise-1_reverse.png", "denoise-1_forward.png"]
    assert [size(p) for p in first] == [(px(reverse_cols), px(2)), (px(forward_cols), px(2))]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again, strict=True))
    assert len(list(tmp_path.iterdir())) == 4  # no temp files left


def test_ddpm_seeds_and_samplers(ddpm_runs, tmp_path):
    run_dir = ddpm_runs["ddpm"]
    first = sample(run_dir, "samples", tmp_path, n=3)[0]
    again = sample(run_dir, "samples", tmp_path, n=3)[0]
    other = sample(run_dir, "samples", tmp_path, n=3, seed=1)[0]
    assert first.read_bytes() == again.read_bytes()
    assert not torch.equal(pixels(first), pixels(other))
    # ancestral sampling (all T steps, fresh noise) and DDIM from the same seed differ, and each
    # is repeatable, the stochastic ones included
    ddpm = [sample(run_dir, "samples", tmp_path, n=3, sampler="ddpm")[0] for _ in range(2)]
    noisy = [sample(run_dir, "samples", tmp_path, n=3, eta=1.0)[0] for _ in range(2)]
    assert ddpm[0].read_bytes() == ddpm[1].read_bytes()
    assert noisy[0].read_bytes() == noisy[1].read_bytes()
    images = [pixels(p) for p in (first, ddpm[0], noisy[0])]
    assert not torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
    # guidance changes a conditional model's samples; labels cycle over classes by default
    cond = sample(ddpm_runs["cddpm"], "samples", tmp_path / "c", n=3)[0]
    guided = sample(ddpm_runs["cddpm"], "samples", tmp_path / "c", n=3, guidance_scale=3.0)[0]
    assert not torch.equal(pixels(cond), pixels(guided))


def test_ddim_interpolation_ends_are_the_ddim_samples_of_the_draws(ddpm_runs, tmp_path):
    n, cols, seed = 2, 4, 3
    [path] = sample(ddpm_runs["ddpm"], "interpolate", tmp_path, n=n, frames=cols, seed=seed)
    model = load_run(ddpm_runs["ddpm"], MODEL_CLASSES, "cpu").model
    draws = torch.randn(2 * n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    grid = tiles(path, n, cols)
    for column, x_T in ((0, draws[0::2]), (cols - 1, draws[1::2])):
        plain = model.sample(n, x_T=x_T, sampler="ddim", steps=SAMPLE_STEPS, eta=0.0)[:, 0]
        assert (grid[:, column] - plain).abs().max() <= 1 / 255 + 1e-6
    assert not torch.equal(grid[:, 1], grid[:, 0]) and not torch.equal(grid[:, 1], grid[:, -1])


def test_denoise_strips_go_from_noise_to_image_and_from_data_to_noise(ddpm_runs, tmp_path):
    n, seed = 4, 2
    reverse, forward = sample(ddpm_runs["ddpm"], "denoise", tmp_path, n=n, seed=seed)
    rev, fwd = tiles(reverse, n, 11), tiles(forward, n, 11)
    # reverse: starts at the seeded x_T (the first draw), shown as (x + 1) / 2 clipped to [0, 1]
    x_T = torch.randn(n, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    assert (rev[:, 0] - ((x_T + 1) / 2).clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    # forward: the first column is test images exactly
    loaded = load_run(ddpm_runs["ddpm"], MODEL_CLASSES, "cpu")
    test_images = loaded.test_split()[0][:, 0].float() / 255
    for image in fwd[:, 0]:
        assert ((test_images - image).abs().amax((1, 2)) < 1e-6).any()
    # ... and the last (t = T - 1, alpha_bar ~ 0) is N(0, 1) noise mapped the same way: mean
    # 1/2, about 2 P(Z > 1) = 32% of pixels clipped, nothing left of the image.
    last = fwd[:, -1]
    assert float(loaded.model.schedule.alpha_bars[-1]) < 1e-3
    assert abs(float(last.mean()) - 0.5) < 0.03
    clipped = float(((last == 0) | (last == 1)).float().mean())
    assert abs(clipped - 0.317) < 0.04
    data = fwd[:, 0] - fwd[:, 0].mean()
    correlation = (data * (last - last.mean())).sum() / (data.norm() * (last - last.mean()).norm())
    assert abs(float(correlation)) < 0.1
    # in between, the image fades: correlation with x_0 falls along the row
    assert float(((fwd[:, 1] - fwd[:, 0]).abs()).mean()) < float((last - fwd[:, 0]).abs().mean())


def test_loaded_ddpm_has_the_ema_weights(ddpm_runs):
    from genlab.checkpoints import load_checkpoint

    loaded = load_run(ddpm_runs["ddpm"], MODEL_CLASSES, "cpu")
    ckpt = load_checkpoint(loaded.checkpoint)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    weights = loaded.model.state_dict()
    assert ema.keys() <= weights.keys()
    assert all(torch.equal(weights[k], ema[k]) for k in ema)
    assert any(not torch.equal(weights[k], raw[k]) for k in raw if k in weights)


def test_ddpm_cli_with_an_unquoted_checkpoint_path(ddpm_runs, tmp_path, monkeypatch, capsys):
    # Lightning names checkpoints epoch=…: such a path works unquoted. The script runs in this
    # process (runpy), which spares the ~10 s a fresh interpreter spends importing lightning.
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    [ckpt] = (ddpm_runs["ddpm"] / "checkpoints").glob("epoch=*.ckpt")
    out = tmp_path / "cli"
    args = [f"run={ckpt}", "task=samples", "n=2", f"out_dir={out}", "device=cpu"]
    monkeypatch.setattr(sys, "argv", [str(REPO / "sample.py"), *args])
    monkeypatch.chdir(REPO)
    try:
        runpy.run_path(str(REPO / "sample.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    assert f"wrote {out / 'samples.png'}" in capsys.readouterr().out
    assert size(out / "samples.png") == (px(2), px(2))
    assert not (REPO / ".hydra").exists() and not (REPO / "sample.log").exists()


def test_cli_quotes_paths_and_prechecks_keys():
    import importlib.util

    from genlab.cli import precheck

    spec = importlib.util.spec_from_file_location("sample_script", REPO / "sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.quote_paths(["run=a/epoch=1.ckpt", "task=samples", "n=2"]) == [
        "run='a/epoch=1.ckpt'",
        "task=samples",
        "n=2",
    ]
    already = ['run="a/epoch=1.ckpt"', "out_dir=plain", "run=${oc.env:X}=1"]
    assert script.quote_paths(already) == already
    precheck(script.quote_paths(["run=a/epoch=1.ckpt", "sampler=ddim"]), "sample")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=script.quote_paths(["run=/x/epoch=1-step=2.ckpt"]))
    assert cfg.run == "/x/epoch=1-step=2.ckpt"
    with pytest.raises(GenlabError, match="Unknown config key 'samplr'. Did you mean 'sampler'"):
        precheck(["run=x", "samplr=ddim"], "sample")


def test_bad_options_fail_before_torch_is_imported(tmp_path):
    code = (
        "import sys\n"
        "from genlab import GenlabError\n"
        "from genlab.sample import run\n"
        "for bad in ({'sampler': 'dd'}, {'eta': -1}, {'guidance_scale': 'x'}, {'steps': 0}):\n"
        "    try:\n"
        f"        run({{'run': {str(tmp_path)!r}, **bad}})\n"
        "    except GenlabError as err:\n"
        "        print(err)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = result.stdout.splitlines()
    assert lines[-1] == "False", result.stderr[-2000:]
    assert [line.split(".")[0] for line in lines[:-1]] == [
        "Invalid option: sampler='dd'",
        "Invalid option: eta=-1",
        "Invalid option: guidance_scale='x'",
        "Invalid option: steps=0",
    ]


REFUSED_BY_DDPM = ["reconstructions", "manifold", "traverse", "latent_scatter", "anomaly"]


@pytest.mark.parametrize("task", REFUSED_BY_DDPM)
def test_ddpm_refuses_latent_code_tasks(ddpm_runs, tmp_path, task):
    with pytest.raises(
        GenlabError,
        match=f"task={task} is not available for this ddpm .*DDPM has no .*"
        r"A ddpm can do: task=samples, interpolate, denoise\.$",
    ):
        sample(ddpm_runs["ddpm"], task, tmp_path / "out")
    assert not (tmp_path / "out").exists()


BAD_DDPM = [
    (
        "classes_unconditional",
        ("ddpm", "classes", {}),
        "unconditional.*model.conditional=true.*A ddpm can do: task=samples, interpolate, denoise",
    ),
    (
        "conditional_can_do_classes",
        ("cddpm", "traverse", {}),
        "A ddpm can do: task=samples, interpolate, classes, denoise",
    ),
    ("vae_denoise", ("vae", "denoise", {}), "diffusion model.*model=ddpm.*A vae can do"),
    ("vae_sampler", ("vae", "samples", {"sampler": "ddim"}), "sampler=ddim steer a diffusion"),
    ("steps_above_T", ("ddpm", "samples", {"steps": T + 1}), f"steps=51.*between 1 and .*T={T}"),
    (
        "interpolate_1_step",
        ("ddpm", "interpolate", {"frames": 1}),
        "frames=1.*>= 2 for task=interp",
    ),
    ("guidance_unconditional", ("ddpm", "samples", {"guidance_scale": 2}), "class-conditional"),
    ("ancestral_steps", ("ddpm", "samples", {"sampler": "ddpm", "steps": 5}), "all T=50 steps"),
    ("ancestral_eta", ("ddpm", "denoise", {"sampler": "ddpm", "eta": 0.5}), "has no eta"),
    ("interpolate_ddpm", ("ddpm", "interpolate", {"sampler": "ddpm"}), "deterministic map"),
    ("interpolate_eta", ("cddpm", "interpolate", {"eta": 1}), "eta=1 fresh noise"),
    ("label_unconditional", ("ddpm", "samples", {"label": 1}), "label=1 picks a class.*uncond"),
    ("label_range", ("cddpm", "denoise", {"label": 10}), r"label=10.*class index in 0\.\.9"),
    ("strip_steps", ("ddpm", "denoise", {"strip_steps": 0}), "strip_steps must be an integer"),
    ("vae_steps", ("vae", "interpolate", {"steps": 5}), "steps=5 steer a diffusion.*frames="),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_DDPM, ids=[b[0] for b in BAD_DDPM])
def test_bad_ddpm_input_is_refused(ddpm_runs, runs, tmp_path, case, args, message):
    model, task, options = args
    run_dir = {**runs, **ddpm_runs}[model]
    with pytest.raises(GenlabError, match=message):
        sample(run_dir, task, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


# -- every task with nothing but its defaults ------------------------------------------------------
# The README's commands give only run=, task= and maybe n=: every other key keeps its
# conf/sample.yaml value. These calls give run=, task= and out_dir= (so the shared run dirs stay
# clean) and nothing else, not even device=, and check what the pictures hold, not only their size.
# Default grid sizes, as documented (README task table, conf/sample.yaml): n per task, 10 images per
# interpolation row, 10 strip steps (+ one column) for denoise, the tiny DDPM's 10 sample steps.
N_SAMPLES = N_RECON = N_INTERP = N_CLASSES = 8
N_MANIFOLD, N_TRAVERSE, N_DENOISE, INTERP_COLS, STRIP_COLS = 12, 9, 4, 10, 11
SCATTER, HISTOGRAMS = (640, 520), (640, 420)
DEFAULTS = [  # (model, task, grids as (columns, rows) or a figure size in pixels)
    ("ae", "reconstructions", (N_RECON, 2 * N_RECON)),
    ("ae", "interpolate", (INTERP_COLS, N_INTERP)),
    ("ae", "manifold", (N_MANIFOLD, N_MANIFOLD)),
    ("ae", "traverse", (N_TRAVERSE, 2)),
    ("ae", "latent_scatter", SCATTER),
    ("ae", "anomaly", HISTOGRAMS),
    ("vae", "samples", (N_SAMPLES, N_SAMPLES)),
    ("vae", "reconstructions", (N_RECON, 2 * N_RECON)),
    ("vae", "interpolate", (INTERP_COLS, N_INTERP)),
    ("vae", "manifold", (N_MANIFOLD, N_MANIFOLD)),
    ("vae", "traverse", (N_TRAVERSE, 2)),
    ("vae", "latent_scatter", SCATTER),
    ("vae", "anomaly", HISTOGRAMS),
    ("cvae", "samples", (10, N_SAMPLES)),  # one class per column
    ("cvae", "reconstructions", (N_RECON, 2 * N_RECON)),
    ("cvae", "interpolate", (INTERP_COLS, N_INTERP)),
    ("cvae", "traverse", (N_TRAVERSE, CVAE_K)),
    ("cvae", "latent_scatter", SCATTER),
    ("cvae", "classes", (10, N_CLASSES)),
    ("cvae", "anomaly", HISTOGRAMS),
    ("ddpm", "samples", (N_SAMPLES, N_SAMPLES)),
    ("ddpm", "interpolate", (INTERP_COLS, N_INTERP)),
    ("ddpm", "denoise", (STRIP_COLS, N_DENOISE)),
    ("cddpm", "samples", (10, N_SAMPLES)),
    ("cddpm", "interpolate", (INTERP_COLS, N_INTERP)),
    ("cddpm", "classes", (10, N_CLASSES)),
    ("cddpm", "denoise", (STRIP_COLS, N_DENOISE)),
]
# The one task a model's type allows but this model cannot do: manifold needs latent_dim=2
# (refused with a message, tested in BAD and by test_manifold_refusal_for_a_vae_above_2d).
CANNOT = {("cvae", "manifold")}
# The out-of-distribution set anomaly picks by default: mnist <-> fashion_mnist (the AE was
# trained on mnist, the VAE and CVAE on the default fashion_mnist).
ANOMALY_DEFAULT = {"ae": "fashion_mnist", "vae": "mnist", "cvae": "mnist"}


def assert_grid_has_content(path, columns, rows):
    assert size(path) == (px(columns), px(rows))
    cells = tiles(path, rows, columns).flatten(0, 1)  # [cells, H, W], the white padding left out
    # No blank or flat cell: each image has structure of its own (the 1-epoch runs: >= 0.026) ...
    assert float(cells.flatten(1).std(1).min()) > 0.01
    # ... and the grid is not one picture repeated, which gives exactly 0: cells differ pixel by
    # pixel. The VAE's interpolations vary least (0.005-0.007): its 1-epoch test codes lie within
    # ~0.3 prior standard deviations of each other, so the paths between them are short.
    assert float(cells.std(0).mean()) > 0.002


def assert_figure_has_content(path, expected, coloured_floor):
    """A matplotlib figure of `expected` size whose data shows: axes and text are black on white,
    the data (class colours, histogram bars) in colour; `coloured_floor` is the least share of
    coloured pixels, above what the legend's markers alone give."""
    assert size(path) == expected
    rgb = pixels(path).float() / 255
    assert float(rgb.std()) > 0.05
    coloured = (rgb.amax(-1) - rgb.amin(-1)) > 0.25
    assert float(coloured.float().mean()) > coloured_floor


# Coloured share of the figures: the scatter's legend alone (its points all NaN, or all on one
# spot) colours 0.23% of the pixels, the runs' 96 test codes 0.5-0.6%; histograms 15-25%.
SCATTER_COLOURED, HISTOGRAMS_COLOURED = 0.004, 0.05


@pytest.mark.parametrize(
    ("model", "task", "expected"), DEFAULTS, ids=[f"{m}-{t}" for m, t, _ in DEFAULTS]
)
def test_every_task_runs_with_its_defaults(
    runs, ddpm_runs, tmp_path, capsys, model, task, expected
):
    written = run(
        {"run": str({**runs, **ddpm_runs}[model]), "task": task, "out_dir": str(tmp_path)}
    )
    if task == "denoise":
        assert [p.name for p in written] == ["denoise_reverse.png", "denoise_forward.png"]
        for path in written:
            assert_grid_has_content(path, *expected)
    elif task == "anomaly":
        stem = f"anomaly-{ANOMALY_DEFAULT[model]}"
        assert [p.name for p in written] == [f"{stem}.png", f"{stem}.json"]
        assert_figure_has_content(written[0], expected, HISTOGRAMS_COLOURED)
        summary = json.loads(written[1].read_text())
        assert 0 <= summary["auroc"] <= 1 and np.isfinite(summary["auroc"])
        assert summary["in_distribution"]["n"] == summary["out_of_distribution"]["n"] == 96
        assert f"AUROC {summary['auroc']:.4f}" in capsys.readouterr().out
    else:
        assert [p.name for p in written] == [f"{task}.png"]
        if task == "latent_scatter":
            assert_figure_has_content(written[0], expected, SCATTER_COLOURED)
        else:
            assert_grid_has_content(written[0], *expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_the_defaults_cover_every_task_of_every_model(runs, ddpm_runs):
    from genlab.sample import tasks_for

    for model, path in {**runs, **ddpm_runs}.items():
        loaded = load_run(path, MODEL_CLASSES, "cpu")
        covered = {task for m, task, _ in DEFAULTS if m == model}
        can = {task for task in tasks_for(loaded.model) if (model, task) not in CANNOT}
        assert covered == can, model


def test_manifold_refusal_for_a_vae_above_2d(runs, tmp_path):
    # README: "genlab: error: task=manifold draws ... latent_dim=16. Use task=traverse ...". A
    # k=16 VAE with the tiny run's data is the run's checkpoint with freshly initialised weights
    # of that size: no training needed to ask for its manifold.
    from genlab.checkpoints import load_checkpoint
    from genlab.models import VAE
    from genlab.runs import init_kwargs

    readme = (REPO / "README.md").read_text()
    documented = readme.split("$ python sample.py run=$RUN task=manifold\n", 1)[1].splitlines()[0]
    wide = tmp_path / "vae16"
    shutil.copytree(runs["vae"], wide, ignore=shutil.ignore_patterns("samples"))
    for ckpt in (wide / "checkpoints").glob("*.ckpt"):
        state = load_checkpoint(ckpt)
        state["hyper_parameters"]["latent_dim"] = 16
        model = VAE(**init_kwargs(VAE, state["hyper_parameters"]))
        state["state_dict"] = model.state_dict()
        torch.save(state, ckpt)
    with pytest.raises(GenlabError) as err:
        run({"run": str(wide), "task": "manifold", "out_dir": str(tmp_path / "out")})
    assert f"genlab: error: {err.value}" == documented
    assert not (tmp_path / "out").exists()


def test_cli_interpolate_as_the_readme_writes_it(runs, tmp_path, monkeypatch, capsys):
    # `python sample.py run=$RUN task=interpolate mode=slerp n=6`: no frames=, so 10 per row.
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    out = tmp_path / "cli"
    args = [f"run={runs['vae']}", "task=interpolate", "mode=slerp", "n=6", f"out_dir={out}"]
    monkeypatch.setattr(sys, "argv", [str(REPO / "sample.py"), *args])
    monkeypatch.chdir(REPO)
    try:
        runpy.run_path(str(REPO / "sample.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    assert f"wrote {out / 'interpolate.png'}" in capsys.readouterr().out
    assert_grid_has_content(out / "interpolate.png", INTERP_COLS, 6)


# -- the task table, the help text and the writer --------------------------------------------------
def test_task_lists_of_help_and_readme_are_generated_from_the_declarations():
    # conf/sample.yaml's --help and the README's table are copies of genlab.sample.help's text:
    # after changing a task, `python -m genlab.sample.help` rewrites them.
    from genlab.sample.help import rendered

    for path, text in rendered().items():
        assert path.read_text() == text, f"{path} is stale: run python -m genlab.sample.help"


def test_what_a_model_can_do_follows_from_its_capabilities():
    # No model needed: the dispatch reads only the declared capabilities.
    from genlab.models.base import Capabilities
    from genlab.sample import tasks_for

    def caps(**given):
        base = dict(generative=False, encoder=False, conditional=False, diffusion=False)
        return Capabilities(**{**base, "gaussian_latent": False, "latent_dim": None, **given})

    ae = caps(encoder=True, latent_dim=2)
    assert tasks_for(ae) == [
        "reconstructions", "interpolate", "manifold", "traverse", "latent_scatter", "anomaly"
    ]  # fmt: skip
    cvae = caps(generative=True, encoder=True, conditional=True, gaussian_latent=True, latent_dim=4)
    assert "manifold" not in tasks_for(cvae) and "classes" in tasks_for(cvae)
    ddpm = caps(generative=True, diffusion=True, conditional=True)
    assert tasks_for(ddpm) == ["samples", "interpolate", "classes", "denoise"]
    assert tasks_for(caps(generative=True)) == []  # generative, but no family of handlers


def test_outputs_never_replace_a_file_that_appears_mid_write(tmp_path):
    # Another command publishes the same name while this one writes: this group moves on to the
    # next free name, withdrawing what it had published, and leaves no temp file.
    from genlab.sample import write_outputs

    def ours(path):
        path.write_text("ours")

    def racing(path):
        (tmp_path / "x.json").write_text("theirs")
        path.write_text("ours")

    written = write_outputs(tmp_path, "x", {".png": ours, ".json": racing}, overwrite=False)
    assert [p.name for p in written] == ["x-1.png", "x-1.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.json", "x-1.png", "x.json"]
    assert (tmp_path / "x.json").read_text() == "theirs"
