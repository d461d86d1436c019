"""Dashboards used their way (issue 26), read back from the files the loggers wrote: TensorBoard's
HParams records of every sweep job, W&B's metric definitions, job types, tags and artifacts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import FAST
from PIL import Image
from test_sweep import job_dirs, sweep, tiny
from wandb_offline import find_runs, read_run

from genlab.dashboards import metric_summary, run_hparams
from genlab.training import run

TINY_AE = ["data=mnist", "model=ae", "model.mlp.hidden=[32]", "model.latent_dim=4"]
TINY_AE += ["eval.sample_quality=false", "save_images=false"]


def hparams_records(log_dir: Path) -> dict[str, object]:
    """{experiment, session_start, session_end}: the HParams plugin's records in the event files
    of `log_dir`, parsed as the plugin parses them."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    found = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                    continue
                content = value.metadata.plugin_data.content
                data = plugin_data_pb2.HParamsPluginData.FromString(content)
                found[data.WhichOneof("data")] = getattr(data, data.WhichOneof("data"))
    return found


def last_scalars(log_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


def hparam_value(value) -> object:
    return getattr(value, value.WhichOneof("kind"))


@pytest.fixture(scope="module")
def tb_sweep(data_root, tmp_path_factory) -> Path:
    """A 2-job sweep (beta=0.5,1; 2 epochs) logged to CSV, TensorBoard and W&B: its dir."""
    tmp_path = tmp_path_factory.mktemp("tb_sweep")
    sweep_dir = tmp_path / "sweep"
    result = sweep(
        *tiny(data_root),
        "logger=[csv,tensorboard,wandb]",
        "tags=[t1]",
        "model.beta=0.5,1",
        "trainer.max_epochs=2",
        f"hydra.sweep.dir={sweep_dir}",
        tmp_path=tmp_path,
        env={"WANDB_API_KEY": ""},  # offline, as without a key (module scope: set here)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "anonymous setting has no effect" not in result.stdout + result.stderr
    return sweep_dir


def test_a_sweep_lists_every_job_in_tensorboard_hparams_and_wandb_columns(tb_sweep):
    """Each job's event file holds the HParams records with its swept value, main keys and
    final metrics (= metrics.json), and its W&B run has the swept value as a tag and config
    column and the best values in its summary."""
    dirs = job_dirs(tb_sweep)
    assert [d.name for d in dirs] == ["0_beta=0.5", "1_beta=1"]
    for d, beta in zip(dirs, (0.5, 1.0), strict=True):
        metrics = json.loads((d / "metrics.json").read_text())
        assert {"val/loss", "test/loss"} <= set(metrics)
        (log_dir,) = (d / "tensorboard").iterdir()
        records = hparams_records(log_dir)
        assert set(records) == {"experiment", "session_start_info", "session_end_info"}
        values = {k: hparam_value(v) for k, v in records["session_start_info"].hparams.items()}
        assert values["model.beta"] == beta and values["model.latent_dim"] == 4
        assert values["model.name"] == "vae" and values["data.name"] == "mnist"
        columns = {m.name.tag for m in records["experiment"].metric_infos}
        assert columns == set(metrics)
        assert {h.name for h in records["experiment"].hparam_infos} == set(values)
        # The table shows each metric's last scalar: metrics.json's value.
        scalars = last_scalars(log_dir)
        for name, value in metrics.items():
            assert scalars[name] == pytest.approx(value, rel=1e-6), name

        wandb_run = read_run(find_runs(d / "wandb")[0])
        assert wandb_run.job_type == "train"
        assert wandb_run.tags == ["t1", f"beta={d.name.split('=')[1]}"]
        assert wandb_run.config["model"]["beta"] == beta  # the column a table groups by
        losses = wandb_run.metric("val/loss")
        assert len(losses) == 2  # one per epoch
        assert wandb_run.summary["val/loss"] == {"min": min(losses), "last": losses[-1]}
        assert losses[-1] == pytest.approx(metrics["val/loss"], rel=1e-6)
        elbos = wandb_run.metric("val/elbo")
        assert wandb_run.summary["val/elbo"] == {"max": max(elbos), "last": elbos[-1]}
        # test metrics are logged once: their summary is that value.
        assert wandb_run.summary["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
        logged = {  # every number logged (images are logged as dicts of their files)
            k
            for row in wandb_run.history
            for k, v in row.items()
            if not k.startswith("_") and "/samples/" not in k and "/reconstructions/" not in k
        }
        assert logged - {"trainer/global_step"} <= set(wandb_run.defined)
        assert wandb_run.defined["val/loss"].step_metric == "trainer/global_step"


def test_evaluate_runs_are_their_own_job_type_and_log_models_on_request(compose, tmp_path):
    trained = tmp_path / "trained"
    metrics = run(compose(*TINY_AE, "logger=[wandb]", "logger.wandb.log_model=true",
                          run_dir=trained))  # fmt: skip
    train_run = read_run(trained / "wandb")
    assert train_run.job_type == "train"
    (artifact,) = train_run.artifacts  # the checkpoint, as a W&B model artifact
    assert artifact.type == "model" and artifact.name == f"model-{train_run.id}"
    assert any(entry.path == "model.ckpt" for entry in artifact.manifest.contents)

    scored_dir = tmp_path / "eval"
    scored = run(compose(*TINY_AE, "logger=[wandb,tensorboard]", f"evaluate={trained}",
                         run_dir=scored_dir))  # fmt: skip
    eval_run = read_run(scored_dir / "wandb")
    assert eval_run.job_type == "evaluate" and not eval_run.artifacts
    assert eval_run.summary["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    (log_dir,) = (scored_dir / "tensorboard").iterdir()
    records = hparams_records(log_dir)
    assert {m.name.tag for m in records["experiment"].metric_infos} == set(scored)
    # Off by default: no artifact.
    plain = tmp_path / "plain"
    run(compose(*TINY_AE, "logger=[wandb]", "trainer.max_epochs=1", run_dir=plain))
    assert not read_run(plain / "wandb").artifacts


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("val/loss", "min,last"),
        ("train/loss_epoch", "min,last"),
        ("val/bpd_diffusion", "min,last"),
        ("val/elbo", "max,last"),
        ("train/iwae_bound", "max,last"),
        ("val/perplexity", None),
        ("val/kl", None),
        ("train/lr", None),
        ("epoch", None),
        ("test/loss", None),
    ],
)
def test_wandb_summaries_keep_the_best_of_curves(name, summary):
    assert metric_summary(name) == summary


def test_hparams_of_a_run_hold_swept_and_main_keys(compose):
    cfg = compose(*FAST, "model=vae", "data=mnist", "model.beta=0.25")
    cfg.sweep_job = {"sweep": "s", "group": "g", "num": 0, "swept": {"model": "vae"}}
    values = run_hparams(cfg)
    assert values["model"] == "vae"  # a swept config group, by its name
    assert values["model.beta"] == 0.25 and values["seed"] == cfg.seed
    assert all(isinstance(v, bool | int | float | str) for v in values.values())


def test_tensorboard_hparams_tab_lists_every_job_in_a_browser(tb_sweep, tmp_path):
    """`tensorboard --logdir <sweep dir>` opened in headless Chromium: the HParams table has one
    row per job, with its beta and its final val/loss as TensorBoard prints them."""
    from browser import chromium, look

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no chromium (Debian: apt-get install chromium); .ci/run installs it")
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tb_sweep),
         "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        for line in board.stdout:  # "TensorBoard 2.21.0 at http://127.0.0.1:PORT/ (Press ...)"
            found = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if found:
                url = found.group(1)
                break
        assert url, "tensorboard printed no address"
        jobs = [d.name for d in job_dirs(tb_sweep)]
        shot = tmp_path / "hparams.png"
        text = look(url + "#hparams", [f"{job}/tensorboard/version_0" for job in jobs], shot)
    finally:
        board.terminate()
        board.wait(timeout=30)
    print(f"screenshot: {shot}")
    rows = re.split(r"(?=\d_beta=[\d.]+/tensorboard/version_0 )", text.split("Trial ID", 1)[1])
    for job, beta in zip(jobs, (0.5, 1.0), strict=True):
        (row,) = [r for r in rows if r.startswith(f"{job}/tensorboard/version_0 ")]
        row = row[:200]
        loss = json.loads((tb_sweep / job / "metrics.json").read_text())["val/loss"]
        # TensorBoard prints numbers with 5 significant digits (toPrecision(5)).
        assert f" {beta:#.5g} " in row and f" {loss:#.5g} " in row, row
    assert "Number of matching session groups: 2" in text
    picture = Image.open(shot)
    assert picture.width >= 1000 and len(set(picture.convert("L").getdata())) > 16


# -- pictures: one layout per kind, on every path -------------------------------------------------
PAD, SIDE = 2, 28  # make_grid's padding; a grid of c columns is c * 30 + 2 pixels wide


def px(cells: int) -> int:
    return cells * (SIDE + PAD) + PAD


SMALL_RUN = ["model.mlp.hidden=[32]", "model.latent_dim=2", "model.iwae_k_val=0", "test=false"]
SMALL_RUN += ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.fixture
def cvae_labels(monkeypatch):
    """Every label tensor a CVAE draws samples or decodes images with, in call order."""
    from genlab.models.cvae.model import CVAE

    seen: list = []
    real_sample, real_decode = CVAE.sample, CVAE.decode_images

    def sample(self, n, labels=None, *args, **kwargs):
        seen.append(("sample", labels.cpu().clone()))
        return real_sample(self, n, labels, *args, **kwargs)

    def decode_images(self, z, y=None):
        seen.append(("decode", None if y is None else y.cpu().clone()))
        return real_decode(self, z, y)

    monkeypatch.setattr(CVAE, "sample", sample, raising=False)
    monkeypatch.setattr(CVAE, "decode_images", decode_images, raising=False)
    return seen


def one_class_per_column(labels, columns: int = 10) -> bool:
    import torch

    grid = labels.view(-1, columns)
    return bool((grid == torch.arange(columns)).all())


def test_class_chosen_grids_have_one_class_per_column_everywhere(compose, tmp_path, cvae_labels):
    """A CVAE's samples.png, its previews, `sample.py task=samples` and `task=classes`, and the
    API: 10 columns (one per class, label = column) and only full rows."""
    import torch

    import genlab
    from genlab.sample import run as sample_run

    out = tmp_path / "run"
    run(compose(*SMALL_RUN, "model=cvae", "model.arch=mlp", "trainer.max_epochs=1"))
    draws = [labels for kind, labels in cvae_labels if kind == "sample"]
    preview, final = draws[0], draws[-1]  # validation's preview, then samples.png
    assert len(preview) == 30 and one_class_per_column(preview)  # 32 rounded to full rows
    assert len(final) == 80 and one_class_per_column(final)
    assert Image.open(out / "samples.png").size == (px(10), px(8))
    assert Image.open(out / "previews" / "epoch=000-samples.png").size == (px(10), px(3))
    # 30 originals -> 24 in whole rows of 8, each row above its reconstructions: 6 full rows.
    assert Image.open(out / "previews" / "epoch=000-reconstructions.png").size == (px(8), px(6))

    cvae_labels.clear()
    (png,) = sample_run({"run": str(out), "task": "samples", "out_dir": str(tmp_path / "s")})
    assert Image.open(png).size == (px(10), px(8))  # the run's own samples.png layout
    decoded = torch.cat([labels for kind, labels in cvae_labels if kind == "decode"])
    assert len(decoded) == 80 and one_class_per_column(decoded)

    cvae_labels.clear()
    (png,) = sample_run(
        {"run": str(out), "task": "classes", "n": 3, "out_dir": str(tmp_path / "c")}
    )
    assert Image.open(png).size == (px(10), px(3))
    decoded = torch.cat([labels for kind, labels in cvae_labels if kind == "decode"])
    assert len(decoded) == 30 and one_class_per_column(decoded)

    # label= picks one class for the whole grid: n x n of it.
    cvae_labels.clear()
    (png,) = sample_run({"run": str(out), "task": "samples", "n": 3, "label": 4,
                         "out_dir": str(tmp_path / "l")})  # fmt: skip
    assert Image.open(png).size == (px(3), px(3))
    assert {label for _, labels in cvae_labels for label in labels.tolist()} == {4}

    # The API cycles the labels in the same order: make_grid(images, nrow=10) is the layout.
    cvae_labels.clear()
    genlab.load(str(out), device="cpu").sample(20, seed=0)
    assert one_class_per_column(cvae_labels[0][1])


def test_unconditional_previews_fill_their_grid(compose, tmp_path):
    run(compose(*SMALL_RUN, "model=vae", "trainer.max_epochs=1", "save_images=false"))
    folder = tmp_path / "run" / "previews"
    assert Image.open(folder / "epoch=000-samples.png").size == (px(8), px(4))  # 32 images
    assert Image.open(folder / "epoch=000-reconstructions.png").size == (px(8), px(8))


def test_vqvae_traverse_shows_the_16_most_varied_code_dims(compose, tmp_path, capsys):
    """Its flattened code grid has thousands of dims (one row each made a 94,082-pixel-tall
    PNG): the traverse shows the 16 the test codes vary most along and says which."""
    import torch

    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_run
    from genlab.sample import run as sample_run

    out = tmp_path / "run"
    run(compose("model=vqvae", "data=mnist", "trainer.max_epochs=1", "test=false",
                "save_images=false", "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1"))  # fmt: skip
    (png,) = sample_run({"run": str(out), "task": "traverse", "out_dir": str(tmp_path / "t")})
    assert Image.open(png).size == (px(9), px(16))
    printed = capsys.readouterr().out
    loaded = load_run(out, MODEL_CLASSES)
    k = loaded.model.latent_dim
    assert k > 16
    images, labels = loaded.test_split()
    with torch.no_grad():
        codes = loaded.model.encode_mean(images.float() / 255)
    dims = sorted(codes.std(0).topk(16).indices.tolist())
    assert f"traverse: 16 of {k} latent dims" in printed
    assert printed.split("vary most along: ")[1].split("\n")[0] == ", ".join(map(str, dims))


# -- the console of the README's main commands ---------------------------------------------------
HYDRA_PREFIX = re.compile(r"^\[[^\]]+\]\[[^\]]+\]\[[A-Z]+\] - ")
# Lines a user cannot act on, each once printed by one of these commands.
NOISE = [
    "v_num",  # the logger's version number in the progress bar
    "dirpath has changed",  # Lightning, on evaluate= and a resume into a new dir
    "anonymous setting has no effect",  # wandb, for Lightning's anonymous=None
    "sync_dist=True",  # Lightning, for values every DDP rank already shares
    "💡 Tip",
    "setup plugin alembic",  # alembic (imported by Optuna), once per plugin
    "exists and is not empty",  # Lightning, on a resume in place (checkpoints, CSV logs)
]


def console(*args: str, cwd: Path, script: str = "train.py") -> str:
    from fixtures import REPO

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    env.pop("WANDB_MODE", None)
    result = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order printed
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout


def repeated_lines(text: str) -> list[str]:
    """Log lines (timestamps dropped) printed more than once; tables, bars and blank lines
    aside."""
    seen, repeated = set(), []
    for raw in text.splitlines():
        line = HYDRA_PREFIX.sub("", raw).rstrip()
        decoration = not any(c.isalnum() for c in line) or any(c in line for c in "━┃│┏┡└")
        if decoration or line.startswith(" "):
            continue
        if line in seen:
            repeated.append(line)
        seen.add(line)
    return repeated


def test_readme_commands_print_each_event_once_without_noise(data_root, tmp_path):
    """One run (progress bar on, CSV + TensorBoard), resumes into a new dir and in place,
    evaluate=, a DDP run, a 2-job grid sweep, a 2-trial Optuna sweep and sample.py: no known
    noise line, no line twice (per job)."""
    base = [*tiny(data_root), "trainer.enable_progress_bar=true"]
    first = tmp_path / "first"
    outputs = {
        "run": console(*base, "logger=[csv,tensorboard]", f"hydra.run.dir={first}", cwd=tmp_path)
    }
    outputs["resume"] = console(
        *base, "trainer.max_epochs=2", f"ckpt_path={first}/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path / 'resumed'}", cwd=tmp_path,
    )  # fmt: skip
    outputs["resume in place"] = console(
        *base, "trainer.max_epochs=2", "ckpt_path=last", f"hydra.run.dir={first}", cwd=tmp_path
    )
    outputs["evaluate"] = console(
        *base, f"evaluate={first}", f"hydra.run.dir={tmp_path / 'scored'}", cwd=tmp_path
    )
    outputs["ddp"] = console(
        *base, "trainer=ddp", "trainer.accelerator=cpu", "eval.sample_quality=true",
        f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path,
    )  # fmt: skip
    outputs["sweep"] = console(
        "-m", *base, "model.beta=0.5,1", "sweep_name=betas", f"hydra.sweep.dir={tmp_path / 's'}",
        cwd=tmp_path,
    )  # fmt: skip
    outputs["optuna"] = console(
        "-m", *base, "sweep=optuna_vae", "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'o'}", cwd=tmp_path,
    )  # fmt: skip
    outputs["sample"] = console(
        f"run={first}", "task=samples", "n=2", "device=cpu", cwd=tmp_path, script="sample.py"
    )
    for command, text in outputs.items():
        for noise in NOISE:
            assert noise not in text, f"{command}: {noise!r} printed"
        # A sweep prints each job's lines once per job: split at the jobs' first line.
        for part in re.split(r"\n(?=.*Launching jobs|.*#\d+ : )", text):
            assert not repeated_lines(part), f"{command}: {repeated_lines(part)}"
    assert "Sweep 'betas' in " in outputs["sweep"]
    assert "Sweep 'betas': 2 of 2 jobs completed." in outputs["sweep"]
    assert "Epoch 0/0" in outputs["run"]  # the progress bar was on


# -- records -----------------------------------------------------------------------------------
def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_resumed_in_place_keeps_one_csv_curve(compose, tmp_path):
    """ckpt_path=last in the run's own dir: version_0 goes on (Lightning alone starts
    version_1 and leaves the first test row beside the curve); rows logged after the
    checkpoint and the earlier test row are gone, every epoch is there once."""
    small = [*TINY_AE[:-1], "trainer.log_every_n_steps=2"]
    first = run(compose(*small, "trainer.max_epochs=1"))
    out = tmp_path / "run"
    before = _csv_rows(out / "csv" / "version_0" / "metrics.csv")
    assert [r for r in before if r.get("test/loss")]  # the first run's test row
    resumed = run(compose(*small, "trainer.max_epochs=2", "ckpt_path=last"))

    assert sorted(p.name for p in (out / "csv").iterdir()) == ["version_0"]
    rows = _csv_rows(out / "csv" / "version_0" / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)
    assert [r for r in rows if r.get("test/loss")] == [
        r for r in rows if r.get("test/loss") and float(r["test/loss"]) == resumed["test/loss"]
    ]
    assert len([r for r in rows if r.get("test/loss")]) == 1
    epochs = [int(float(r["epoch"])) for r in rows if r.get("val/loss")]
    assert epochs == [0, 1]
    # The first epoch's rows are the ones written before the resume.
    kept = [r for r in rows if r.get("val/loss")][0]
    assert float(kept["val/loss"]) == pytest.approx(first["val/loss"], rel=1e-6)
    step_rows = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert len(step_rows) == len(set(step_rows))  # no step twice


def test_debug_fast_writes_what_the_readme_says(compose, tmp_path):
    run(compose(*TINY_AE, "debug=fast"))
    out = tmp_path / "run"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    written = [p for p in written if not p.startswith(".")]
    assert written == [
        "checkpoints/last.ckpt",
        "config.yaml",
        "csv/version_0/hparams.yaml",
        "metrics.json",
        "previews/epoch=000-reconstructions.png",
    ]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "no metric curves, `csv/` holds `hparams.yaml` only" in readme


@pytest.mark.parametrize("show", [["--cfg", "job"], ["--cfg=job"], ["-c", "job", "-p", "model"]])
def test_showing_the_config_with_a_bad_key_gets_genlabs_message(show, tmp_path):
    from fixtures import REPO

    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *show, "model.bta=1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("genlab: error: Unknown config key 'model.bta'. Did you mean")
    assert "HYDRA_FULL_ERROR" not in result.stderr + result.stdout
