"""Hostile values, as a user types them (issue 24, sections 3-5): every numeric option with 0,
-1, nan, inf, 1e200 and non-numbers; messages that must name the key the user typed; Optuna
searches whose trials fail or diverge (the real sweeper); image modes and data dirs (16-bit
PNGs, symlink loops, read-only folders). CLI paths run as subprocesses of sample.py / train.py
on tiny trained runs; a refusal must exit 2 with one message naming the key, no traceback, no
picture written and no run dir left behind.

Read-only folders: chmod does not stop root, so as root a folder is made read-only by a
read-only bind mount of itself (`mount --bind` + `remount,ro`: writes fail with EROFS, as on a
read-only NFS export); as another user by chmod 555 (EACCES). Where neither works the tests
that need one are skipped, saying why.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fixtures import FAST, N_TEST, REPO, TINY_DDPM, class_images, write_mnist_family
from PIL import Image

from genlab import GenlabError

COMMON = [*FAST, "eval.sample_quality=false", "test=false"]  # FAST: data.system_dirs=[] too
SMALL = ["model.mlp.hidden=[32]", "model.latent_dim=4"]
TINY = ["data=mnist", *SMALL, *COMMON]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.update(GENLAB_OUTPUT_DIR=str(tmp / "outputs"), XDG_CACHE_HOME=str(tmp / "cache"))
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SERVICE", "GENLAB_DATA_DIR"):
        env.pop(key, None)
    env.update(extra)
    return env


def run(script: str, args: list[str], cwd: Path, env=None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env or _env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_refused(result, named: str, fix: str | None = None) -> str:
    """Exit 2, one `genlab: error:` paragraph naming `named` (and `fix`), no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    error = text[text.index("genlab: error: ") :].strip()
    assert "\n" not in error, error
    assert named in error, error
    if fix is not None:
        assert fix in error, error
    return error


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()] if folder.exists() else []


# -- tiny trained runs, shared by the module ------------------------------------------------------
@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> dict[str, Path]:
    """A trained CVAE and a trained tiny DDPM (one epoch each), through train.py."""
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for name, model in (("cvae", ["model=cvae", *SMALL]), ("ddpm", TINY_DDPM)):
        args = [f"paths.data_dir={data_root}", "data=mnist", *model, *COMMON]
        args += ["trainer.limit_train_batches=2"]
        result = run("train.py", [*args, f"hydra.run.dir={root / name}"], root)
        assert result.returncode == 0, result.stderr[-3000:]
        found[name] = root / name
    return found


# -- sample.py: every numeric option with hostile values ------------------------------------------
SAMPLE_CASES = [
    # (run, arguments, the key named, part of the accepted range or fix)
    ("ddpm", ["sampler=ddim", "eta=1e200"], "eta=", "[0, 1]"),
    ("ddpm", ["sampler=ddim", "eta=inf"], "eta=inf", "[0, 1]"),
    ("ddpm", ["sampler=ddim", "eta=-inf"], "eta=-inf", "[0, 1]"),
    ("ddpm", ["sampler=ddim", "eta=nan"], "eta=nan", "[0, 1]"),
    ("ddpm", ["sampler=ddim", "eta=1.5"], "eta=1.5", "[0, 1]"),
    ("ddpm", ["eta=abc"], "eta=", "[0, 1]"),
    ("ddpm", ["guidance_scale=inf"], "guidance_scale=inf", "[0, 100]"),
    ("ddpm", ["guidance_scale=1e200"], "guidance_scale=", "[0, 100]"),
    ("ddpm", ["guidance_scale=nan"], "guidance_scale=nan", "[0, 100]"),
    ("ddpm", ["steps=1e200"], "steps=", ">= 1"),
    ("ddpm", ["steps=inf"], "steps=inf", ">= 1"),
    ("ddpm", ["steps=-1"], "steps=-1", ">= 1"),
    ("ddpm", ["steps=1000000000"], "steps=1000000000", "T=50"),
    ("ddpm", ["task=denoise", "strip_steps=1000000000"], "strip_steps=1000000000", "smaller"),
    ("ddpm", ["task=denoise", "strip_steps=nan"], "strip_steps=nan", ">= 1"),
    ("ddpm", ["n=inf"], "n=inf", ">= 1"),
    ("ddpm", ["n=0"], "n=0", ">= 1"),
    ("ddpm", ["n=-1"], "n=-1", ">= 1"),
    ("ddpm", ["n=1e200"], "n=", ">= 1"),
    ("ddpm", ["seed=1e200"], "seed=", ">= 0"),
    ("ddpm", ["seed=nan"], "seed=nan", ">= 0"),
    ("ddpm", ["batch_size=inf"], "batch_size=inf", ">= 1"),
    ("cvae", ["task=classes", "label=999999"], "label=999999", "drop it"),
    ("cvae", ["task=samples", "label=999999"], "label=999999", "0..9"),
    ("cvae", ["label=nan"], "label=nan", ">= 0"),
    ("cvae", ["label=1e200"], "label=", ">= 0"),
    ("cvae", ["task=interpolate", "frames=1000000000"], "frames=1000000000", "smaller frames"),
    ("cvae", ["task=interpolate", "frames=inf"], "frames=inf", ">= 2"),
    ("cvae", ["task=traverse", "traverse_range=inf"], "traverse_range=inf", "(0, 100]"),
    ("cvae", ["task=traverse", "traverse_range=1e200"], "traverse_range=", "(0, 100]"),
    ("cvae", ["task=traverse", "traverse_range=nan"], "traverse_range=nan", "(0, 100]"),
    ("cvae", ["task=reconstructions", "max_images=inf"], "max_images=inf", ">= 2"),
    ("cvae", ["n=abc"], "n=", ">= 1"),
]


@pytest.fixture(scope="module")
def sample_results(runs, tmp_path_factory):
    """Every SAMPLE_CASES command line run by sample.py, two at a time."""
    root = tmp_path_factory.mktemp("sample")

    def one(i: int):
        which, args, _, _ = SAMPLE_CASES[i]
        out = root / f"out{i}"
        return run("sample.py", [f"run={runs[which]}", *args, f"out_dir={out}"], root), out

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(len(SAMPLE_CASES))))


@pytest.mark.parametrize(
    ("index", "case"),
    list(enumerate(SAMPLE_CASES)),
    ids=[f"{c[0]}:{' '.join(c[1])}" for c in SAMPLE_CASES],
)
def test_sample_refuses_a_hostile_value_by_name(sample_results, index, case):
    result, out = sample_results[index]
    _, _, named, fix = case
    assert_refused(result, named, fix)
    assert not files_under(out)  # no picture, NaN or other


def test_eta_at_the_ends_of_its_range_writes_finite_pictures(runs, tmp_path):
    """The control of the eta rows: eta=1 (and 0) are taken and give finite, non-flat images."""
    for eta in ("0", "1"):
        out = tmp_path / f"eta{eta}"
        args = [f"run={runs['ddpm']}", "sampler=ddim", f"eta={eta}", f"out_dir={out}", "n=2"]
        result = run("sample.py", args, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        pixels = np.asarray(Image.open(out / "samples.png"), dtype=np.float64)
        assert np.isfinite(pixels).all() and pixels.std() > 0


def test_the_python_api_refuses_the_same_sampler_values(runs):
    import genlab

    pipe = genlab.load(runs["ddpm"], device="cpu")
    for kwargs, named in (
        ({"eta": math.inf}, "eta=inf"),
        ({"eta": 1e200}, "eta="),
        ({"guidance_scale": math.nan}, "guidance_scale=nan"),
    ):
        with pytest.raises(GenlabError, match=named):
            pipe.sample(2, sampler="ddim", **kwargs)


# -- train.py: numbers that are not finite, in every group -----------------------------------------
TRAIN_CASES = [
    (["model.beta=inf"], "model.beta"),
    (["model.beta=nan"], "model.beta"),
    (["model.optimizer.lr=inf"], "model.optimizer.lr"),
    (["model.optimizer.weight_decay=nan"], "model.optimizer.weight_decay"),
    (["trainer.gradient_clip_val=inf"], "trainer.gradient_clip_val"),
    (["data.val_fraction=inf"], "data.val_fraction"),
    (["scheduler=warmup_cosine", "scheduler.min_lr_ratio=nan"], "scheduler.min_lr_ratio"),
    ([*TINY_DDPM, "model.eta=2"], "model.eta"),
    ([*TINY_DDPM, "model.eta=inf"], "model.eta"),
    ([*TINY_DDPM, "model.guidance_scale=inf"], "model.guidance_scale"),
    (["trainer.max_epochs=inf"], "trainer.max_epochs"),
    (["seed=inf"], "seed"),
]


@pytest.mark.parametrize(("argv", "named"), TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_refuses_a_number_that_is_not_finite(argv, named, data_root):
    from genlab.cli import precheck

    with pytest.raises(GenlabError) as err:
        precheck([f"paths.data_dir={data_root}", "data=mnist", *argv], "train")
    assert f"{named}=" in str(err.value)


def test_non_finite_train_value_end_to_end(tmp_path, data_root):
    result = run("train.py", [f"paths.data_dir={data_root}", *TINY, "model.beta=inf"], tmp_path)
    assert_refused(result, "model.beta=inf", ">= 0")
    assert not files_under(tmp_path / "outputs")


# -- refusals inside a run: the key the user typed, and no run dir left --------------------------
def test_evaluate_of_a_dir_without_checkpoints_names_evaluate(tmp_path, data_root):
    (tmp_path / "empty").mkdir()
    args = [f"paths.data_dir={data_root}", *TINY, f"evaluate={tmp_path / 'empty'}"]
    error = assert_refused(run("train.py", args, tmp_path), "evaluate=", "holds no checkpoints")
    assert "ckpt_path" not in error
    assert not files_under(tmp_path / "outputs")


def test_evaluate_with_a_changed_setting_refuses_without_a_resume_line(runs, tmp_path, data_root):
    args = [f"paths.data_dir={data_root}", "data=mnist", "model=cvae", *SMALL, *COMMON]
    args += ["model.beta=0.5"]
    result = run("train.py", [*args, f"evaluate={runs['cvae']}"], tmp_path)
    assert_refused(result, "evaluate=", "model.beta: 1.0 -> 0.5")
    assert "Resuming" not in result.stdout + result.stderr
    assert not files_under(tmp_path / "outputs")


def test_wandb_online_without_a_key_is_one_message(tmp_path, data_root):
    args = [f"paths.data_dir={data_root}", *TINY, "logger=wandb", "logger.wandb.mode=online"]
    env = _env(tmp_path, HOME=str(tmp_path), WANDB_DIR=str(tmp_path / "wandb"))  # no ~/.netrc
    result = run("train.py", args, tmp_path, env=env)
    assert_refused(result, "logger.wandb.mode=online", "wandb login")
    assert "WANDB_API_KEY" in result.stderr and "logger.wandb.mode=offline" in result.stderr
    assert not files_under(tmp_path / "outputs")


@pytest.mark.parametrize("kind", ["under-a-file", "read-only"])
def test_unwritable_wandb_save_dir_is_refused_by_name(kind, tmp_path, data_root):
    """W&B would write to the system temp dir instead (and genlab's sync hint would name a
    folder that does not exist)."""
    (tmp_path / "a_file").write_text("x")
    args = [f"paths.data_dir={data_root}", *TINY, "logger=wandb", "logger.wandb.mode=offline"]
    if kind == "under-a-file":
        save_dir = tmp_path / "a_file" / "w"
        result = run("train.py", [*args, f"logger.wandb.save_dir={save_dir}"], tmp_path)
    else:
        with read_only(tmp_path / "locked") as save_dir:
            result = run("train.py", [*args, f"logger.wandb.save_dir={save_dir}"], tmp_path)
    assert_refused(result, f"logger.wandb.save_dir={save_dir}", "cannot be written")
    assert not files_under(tmp_path / "outputs")


def test_missing_mnist_says_where_it_looked_and_how_to_get_it(tmp_path):
    args = [f"paths.data_dir={tmp_path / 'nodata'}", *TINY]
    error = assert_refused(run("train.py", args, tmp_path), "Dataset 'mnist' not found on disk")
    assert f"looked in {tmp_path / 'nodata' / 'MNIST' / 'raw'}" in error
    assert "apt-get install dataset-fashion-mnist" in error and "Download is off" in error
    assert ":." not in error
    assert not files_under(tmp_path / "outputs")  # no run dir with an empty train.log


def test_a_failed_download_gives_its_reason(tmp_path, monkeypatch):
    import torchvision

    from genlab.data.sources import load_split

    def offline(*args, **kwargs):
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
            "<urlopen error [Errno -2] Name or service not known>"
        )

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(GenlabError) as err:
        load_split("mnist", tmp_path / "data", train=True, download=True)
    assert "Name or service not known" in str(err.value) and ":." not in str(err.value)


def test_data_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "not_a_dir").write_text("x")
    env = _env(tmp_path, GENLAB_DATA_DIR=str(tmp_path / "not_a_dir"))
    result = run("train.py", TINY, tmp_path, env=env)
    assert_refused(result, "GENLAB_DATA_DIR", "is a file, not a folder")


# -- Slurm without a controller: a fake sbatch that fails as Slurm does ---------------------------
def _fake_slurm(folder: Path) -> Path:
    folder.mkdir()
    tools = {
        "sbatch": 'echo "sbatch: error: Batch job submission failed: Unable to contact slurm '
        'controller (connect failure)" >&2; exit 1',
        "scontrol": 'if [ "$1" = ping ]; then if [ -n "$FAKE_CTLD_UP" ]; then '
        'echo "Slurmctld(primary) at ctl is UP"; exit 0; fi; '
        'echo "Slurmctld(primary) at ctl is DOWN"; exit 1; fi; '
        'echo "slurm_load_partitions: Unable to contact slurm controller" >&2; exit 1',
        "sacct": "exit 1",
        "scancel": "exit 1",
    }
    for name, body in tools.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.mark.parametrize("where", ["precheck", "sbatch"])
def test_slurm_without_a_controller_is_one_message(where, tmp_path, data_root):
    """`precheck`: `scontrol ping` says DOWN, refused before anything is written; `sbatch`: the
    controller answers the ping but sbatch fails, refused by the launcher, its sweep dir gone."""
    fake = _fake_slurm(tmp_path / "bin")
    env = _env(tmp_path, PATH=f"{fake}:{os.environ['PATH']}")
    if where == "sbatch":
        env["FAKE_CTLD_UP"] = "1"
    sweep_dir = tmp_path / "sweep"
    args = ["-m", f"paths.data_dir={data_root}", *TINY, "model.beta=1,2", "hydra/launcher=slurm"]
    result = run("train.py", [*args, f"hydra.sweep.dir={sweep_dir}"], tmp_path, env=env)
    error = assert_refused(result, "hydra/launcher=slurm", "scontrol ping")
    assert ("DOWN" if where == "precheck" else "Unable to contact slurm controller") in error
    assert not sweep_dir.exists() and "jobs completed" not in result.stdout + result.stderr


# -- Optuna: failed and diverged trials (the real hydra-optuna-sweeper) ---------------------------
def _optuna(tmp_path, data_root, lrs: str, trials: int):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "sweep=optuna_vae", f"paths.data_dir={data_root}", *TINY, "model.beta=1"]
    args += [f"hydra.sweeper.n_trials={trials}", f"model.optimizer.lr=choice({lrs})"]
    args += ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]
    args += [f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"]
    return run("train.py", [*args, f"hydra.sweep.dir={sweep_dir}"], tmp_path), sweep_dir


def _trial_states(tmp_path) -> list[str]:
    import optuna

    study = optuna.load_study(study_name="optuna_vae", storage=f"sqlite:///{tmp_path / 'study.db'}")
    return [t.state.name for t in study.trials]


def test_optuna_records_a_diverged_trial_as_failed_and_goes_on(tmp_path, data_root):
    """Three trials of lr in {1e-3, 1e30} (seeded: 1e30, 1e-3, 1e30): the diverged trials are
    FAIL in the study, the next trials run, optimization_results.yaml holds the best of the
    completed one, the report lists the failed trials, the sweep exits 1 at the end."""
    result, sweep_dir = _optuna(tmp_path, data_root, "1e-3,1e30", 3)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "Values were told" not in text
    assert _trial_states(tmp_path) == ["FAIL", "COMPLETE", "FAIL"]
    from omegaconf import OmegaConf

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_params == {"model.optimizer.lr": 0.001} and math.isfinite(best.best_value)
    rows = list(csv.DictReader((sweep_dir / "report" / "jobs.csv").open()))
    assert [r["status"] for r in rows] == ["failed", "completed", "failed"]
    assert "diverged" in rows[0]["error"].lower()
    assert text.count("Optuna records it as failed") == 2


def test_optuna_with_every_trial_failed_writes_its_results_without_a_traceback(tmp_path, data_root):
    result, sweep_dir = _optuna(tmp_path, data_root, "1e30", 2)
    text = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert _trial_states(tmp_path) == ["FAIL", "FAIL"]
    from omegaconf import OmegaConf

    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value is None and best.failed_trials == 2


@pytest.mark.parametrize(
    ("override", "named", "fix"),
    [
        (
            "hydra.sweeper.params.model.beta=tag(log,interval(1e-4,1))",
            "hydra.sweeper.params.model.beta",
            "model.beta=tag(log,interval(1e-4,1))",
        ),
        (
            "+hydra.sweeper.params.model.beta=tag(log,interval(1e-4,1))",
            "hydra.sweeper.params.model.beta",
            "on the command line",
        ),
        ("hydra.sweeper.params.model.latent_dim=choice(2,4)", "latent_dim", "choice(2,4)"),
        ("model.beta=tag(log,interval(0,1))", "model.beta", "start > 0"),
    ],
)
def test_search_space_overrides_get_the_way_to_write_them(override, named, fix, data_root):
    from genlab.sweep.precheck import check_multirun

    with pytest.raises(GenlabError) as err:
        check_multirun(["-m", "sweep=optuna_vae", f"paths.data_dir={data_root}", override], "train")
    assert named in str(err.value) and fix in str(err.value), str(err.value)


def test_hydras_own_optuna_sweeper_is_refused_for_genlabs(data_root):
    from genlab.sweep.precheck import check_multirun

    with pytest.raises(GenlabError, match="hydra/sweeper=genlab_optuna"):
        check_multirun(
            ["-m", "hydra/sweeper=optuna", f"paths.data_dir={data_root}", "model.beta=1,2"],
            "train",
        )


def test_a_failed_job_return_is_a_failed_trial_for_the_plugin():
    """What the plugin does with a job's value: float() of a FailedTrial raises ValueError,
    which hydra-optuna-sweeper turns into `study.tell(state=FAIL)` with no values."""
    from hydra.core.utils import JobReturn, JobStatus

    from genlab.sweep.optuna import FailedTrial, failure

    for value in (math.nan, math.inf, None, "x"):
        ret = JobReturn(status=JobStatus.COMPLETED, _return_value=value)
        assert failure(ret) is not None
    raised = JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("boom"))
    assert failure(raised) == "RuntimeError: boom"
    assert failure(JobReturn(status=JobStatus.COMPLETED, _return_value=-512.5)) is None
    with pytest.raises(ValueError, match="why"):
        float(FailedTrial("why"))


# -- image folders: every mode Pillow reads, 16-bit PNGs ------------------------------------------
def _grey16(seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (side, side), dtype=np.uint16)


def _source_rgb(seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16"]


def _image_in(mode: str, seed: int):
    """(an image of `mode`, the 8-bit grey and RGB pixels genlab must decode it to)."""
    if mode in ("I", "I;16"):
        values = _grey16(seed)
        image = (
            Image.fromarray(values) if mode == "I;16" else Image.fromarray(values.astype(np.int32))
        )
        grey = np.rint(values / 257.0).astype(np.uint8)
        return image, grey, np.repeat(grey[..., None], 3, axis=2)
    rgb = Image.fromarray(_source_rgb(seed))
    image = rgb.convert(mode)
    return image, np.asarray(image.convert("L")), np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_is_decoded_to_its_8_bit_pixels(mode, tmp_path):
    from genlab.data.folder import decode

    image, grey, rgb = _image_in(mode, 3)
    # PNG holds no CMYK, and Pillow writes no mode I PNG (older Pillows read 16-bit ones so)
    path = tmp_path / {"CMYK": "x.jpg", "I": "x.tif"}.get(mode, "x.png")
    image.save(path, **({"quality": 100} if mode == "CMYK" else {}))
    with Image.open(path) as opened:
        assert opened.mode in ({mode} | ({"I", "I;16"} if mode.startswith("I") else set()))
        if mode == "CMYK":  # JPEG is lossy: the file's own pixels, near the source's
            assert np.abs(np.asarray(opened.convert("RGB"), dtype=int) - rgb).mean() < 8
            grey, rgb = np.asarray(opened.convert("L")), np.asarray(opened.convert("RGB"))
    np.testing.assert_array_equal(decode(path, 16, 1, resize=False)[0], grey)
    np.testing.assert_array_equal(decode(path, 16, 3, resize=False).transpose(1, 2, 0), rgb)


@pytest.mark.parametrize(
    ("image", "named"),
    [
        (Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)), "mode is F"),
        (Image.fromarray(np.full((8, 8), 70000, dtype=np.int32)), "outside the 16-bit range"),
        (Image.fromarray(np.full((8, 8), -5, dtype=np.int32)), "outside the 16-bit range"),
    ],
    ids=["F", "I-above-16-bit", "I-negative"],
)
def test_modes_without_a_fixed_range_are_refused_by_mode(image, named):
    from genlab.data.folder import eight_bit

    with pytest.raises(GenlabError, match=named):
        eight_bit(image)


def test_a_refused_file_is_named_with_its_folder(tmp_path, monkeypatch):
    """Through the cache: the message names data.path, the file and its mode."""
    from genlab.data import folder as folder_module

    for i in range(4):
        Image.fromarray(_source_rgb(i)).save(tmp_path / f"ok{i}.png")
    real_open = Image.open

    def as_float(path, *args, **kwargs):  # PNG cannot hold floats; Pillow's TIFFs can
        opened = real_open(path, *args, **kwargs)
        return opened.convert("F") if Path(path).name == "ok2.png" else opened

    monkeypatch.setattr(Image, "open", as_float)
    with pytest.raises(GenlabError) as err:
        folder_module.cached_folder(
            tmp_path, tmp_path / "data", image_size=16, channels=1, resize=False, split_seed=0
        )
    assert "data.path=" in str(err.value) and "ok2.png" in str(err.value)
    assert "mode is F" in str(err.value)


def test_sixteen_bit_pngs_are_scaled_not_clipped_in_the_cache(tmp_path):
    """The cached pixels of 16-bit grey PNGs are the source / 257 (rounded): their mean too,
    where Pillow's own conversion turned 98% of them into 255."""
    from genlab.data.folder import cached_folder

    sources = {f"g{i}.png": _grey16(i) for i in range(8)}
    for name, values in sources.items():
        Image.fromarray(values).save(tmp_path / name)
    cached = cached_folder(
        tmp_path, tmp_path / "data", image_size=16, channels=1, resize=False, split_seed=0
    )
    images = cached["images"].numpy().astype(np.float64)
    source = np.stack(list(sources.values())).astype(np.float64) / 257.0
    assert abs(images.mean() - source.mean()) < 1
    assert (images == 255).mean() < 0.05
    assert sorted(np.round(images.reshape(8, -1).mean(1), 3)) == sorted(
        np.round(np.rint(source).reshape(8, -1).mean(1), 3)
    )


# -- data dirs: symlink loops, read-only folders --------------------------------------------------
def test_a_symlink_loop_in_a_class_folder_is_one_message(tmp_path, data_root):
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(_source_rgb(i)).save(tmp_path / "imgs" / cls / f"{i}.png")
    os.symlink("..", tmp_path / "imgs" / "a" / "loop")
    args = ["data=image_folder", f"data.path={tmp_path / 'imgs'}", "data.image_size=16"]
    result = run("train.py", [*args, f"paths.data_dir={data_root}", *COMMON], tmp_path)
    assert_refused(result, "data.path", "symlink loop")


@contextmanager
def read_only(folder: Path):
    """`folder` read-only for this process and its children (see the module doc)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
        if bind.returncode == 0:
            mounted = True
            ro = ["mount", "-o", "remount,bind,ro", str(folder)]
            if subprocess.run(ro, capture_output=True).returncode != 0:
                subprocess.run(["umount", str(folder)], capture_output=True)
                mounted = False
    else:
        folder.chmod(0o555)
    try:
        try:
            (folder / ".probe").write_text("x")
        except OSError:
            pass
        else:
            (folder / ".probe").unlink()
            pytest.skip("cannot make a read-only folder here (no bind mount as root)")
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)


def test_read_only_data_dir_with_debians_copy_trains(tmp_path):
    """paths.data_dir read-only and empty; Fashion-MNIST in a system folder, gzipped as Debian
    ships it: the run trains, nothing is written into either."""
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist_family(system, gz=True)
    before = sorted(p.name for p in system.iterdir())
    with read_only(tmp_path / "shared"), read_only(system):
        args = [f"paths.data_dir={tmp_path / 'shared'}", "data=fashion_mnist", *SMALL]
        args += [a for a in COMMON if not a.startswith("data.system_dirs")]
        args += [f"data.system_dirs=[{system}]", "trainer.limit_train_batches=2"]
        result = run("train.py", args, tmp_path)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "PermissionError" not in result.stderr
    assert not list((tmp_path / "shared").iterdir())
    assert sorted(p.name for p in system.iterdir()) == before
    metrics = next((tmp_path / "outputs").rglob("metrics.json"))
    assert math.isfinite(json.loads(metrics.read_text())["val/loss"])


def test_read_only_image_folder_caches_in_the_users_cache_said_once(tmp_path):
    images = tmp_path / "shared" / "images"
    for c, cls in enumerate(("a", "b")):
        (images / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(_source_rgb(10 * c + i)).save(images / cls / f"{i}.png")
    with read_only(tmp_path / "shared"):
        args = [f"paths.data_dir={tmp_path / 'shared'}", "data=image_folder", *SMALL, *COMMON]
        args += [f"data.path={images}", "data.image_size=16"]
        result = run("train.py", args, tmp_path)
        text = result.stdout + result.stderr
        assert result.returncode == 0, text[-3000:]
    assert text.count("cannot be written") == 1, text[-3000:]
    assert list((tmp_path / "cache" / "genlab" / "genlab_image_cache").glob("*/*/images.npy"))
    assert not (images / ".genlab_cache").exists()


def test_mnist_is_read_where_it_is_not_copied(tmp_path):
    from genlab.data.sources import load_split

    write_mnist_family(tmp_path / "MNIST" / "raw", gz=True)
    images, labels = load_split("mnist", tmp_path, train=False, download=False)
    expected, expected_labels = class_images(N_TEST, (28, 28, 1), 1)
    np.testing.assert_array_equal(images[:, 0].numpy(), expected[..., 0])
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    held = {p.name for p in (tmp_path / "MNIST" / "raw").iterdir()}
    assert held == {
        f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")
    }


def test_caches_of_a_read_only_data_dir_go_to_the_users_cache_said_once(tmp_path, monkeypatch):
    import logging

    from genlab.data.folder import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with read_only(tmp_path / "shared"):
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("genlab").addHandler(handler)
        try:
            first, second = cache_dir(tmp_path / "shared"), cache_dir(tmp_path / "shared")
        finally:
            logging.getLogger("genlab").removeHandler(handler)
        assert first == second == tmp_path / "cache" / "genlab"
        assert [r.getMessage() for r in records if "cannot be written" in r.getMessage()] == [
            f"paths.data_dir={tmp_path / 'shared'} cannot be written: genlab's caches go to "
            f"{tmp_path / 'cache' / 'genlab'}"
        ]
        with read_only(tmp_path / "cache"), pytest.raises(GenlabError, match="XDG_CACHE_HOME"):
            cache_dir(tmp_path / "shared")


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"], ids=["I;16", "I;16B", "I"])
def test_sixteen_bit_values_scale_alike_in_every_byte_order(dtype):
    from genlab.data.folder import eight_bit

    values = _grey16(7)
    converted = eight_bit(Image.fromarray(values.astype(dtype)))
    assert converted.mode == "L"
    np.testing.assert_array_equal(np.asarray(converted), np.rint(values / 257.0).astype(np.uint8))
