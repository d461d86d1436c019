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
from conftest import CONF_DIR, FAST, REPO, write_inverted_mnist_family
from PIL import Image

from genlab import GenlabError
from genlab.sample import load_run, rank_auroc, run

PAD, SIDE = 2, 28  # make_grid padding, image side: a grid of c columns is c * 30 + 2 wide
CVAE_K = 4


def px(cells: int) -> int:
    return cells * (SIDE + PAD) + PAD


def _train(data_root, run_dir, *overrides):
    from hydra import compose, initialize_config_dir

    import genlab.resolvers  # noqa: F401
    from genlab.train import run as train

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.data_dir={data_root}",
                f"paths.output_dir={run_dir}",
                *FAST,
                "model.mlp.hidden=[64]",
                "test=false",
                "save_images=false",
                *overrides,
            ],
        )
    train(cfg)
    return run_dir


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """One tiny trained run per model type (1 epoch), shared by the whole module."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "ae": _train(data_root, root / "ae", "model=ae", "data=mnist", "model.latent_dim=2"),
        "vae": _train(data_root, root / "vae", "model=vae", "model.latent_dim=2"),
        "cvae": _train(data_root, root / "cvae", "model=cvae", f"model.latent_dim={CVAE_K}"),
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
    ("cvae", "samples", {"n": 3}, (px(3), px(3))),
    ("ae", "reconstructions", {"n": 3}, (px(3), px(6))),
    ("cvae", "reconstructions", {"n": 2}, (px(2), px(4))),
    ("vae", "interpolate", {"n": 3, "steps": 5, "mode": "slerp"}, (px(5), px(3))),
    ("ae", "interpolate", {"n": 2, "steps": 4}, (px(4), px(2))),
    ("cvae", "interpolate", {"n": 2, "steps": 3, "mode": "slerp"}, (px(3), px(2))),
    ("ae", "manifold", {"n": 5}, (px(5), px(5))),
    ("vae", "manifold", {"n": 6}, (px(6), px(6))),
    ("cvae", "traverse", {"n": 7}, (px(7), px(CVAE_K))),
    ("ae", "traverse", {"n": 5}, (px(5), px(2))),
    ("cvae", "classes", {"n": 3}, (px(3), px(10))),
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
    loaded = load_run(runs["vae"], "cpu")
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
    a = sample(runs["cvae"], "interpolate", tmp_path, n=2, steps=3)[0]
    b = sample(runs["cvae"], "interpolate", tmp_path, n=2, steps=3)[0]
    c = sample(runs["cvae"], "interpolate", tmp_path, n=2, steps=3, seed=5)[0]
    assert a.read_bytes() == b.read_bytes() and not torch.equal(pixels(a), pixels(c))


def test_vae_and_cvae_samples_differ(runs, tmp_path):
    vae = sample(runs["vae"], "samples", tmp_path / "v", n=4)[0]
    cvae = sample(runs["cvae"], "samples", tmp_path / "c", n=4)[0]
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
