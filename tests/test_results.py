"""benchmarks/results.py, the script behind docs/results.md: its --quick mode end to end on the
tiny data files (every step a real train.py / sample_quality.py process), the page checked
against the run dirs' own metrics.json, a second run that skips what is recorded, an unfinished
step redone without losing the first attempt's files, and every command of the full plan
composing against the real conf/."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import results  # noqa: E402
from results_report import _trend  # noqa: E402


def run_results(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.run(
        [sys.executable, "benchmarks/results.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )


@pytest.fixture(scope="module")
def quick(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    args = ("--quick", "--out-dir", str(out), "--data-dir", str(data_root))
    done = run_results(*args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out, args, done


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def table_row(page: str, title: str) -> list[str]:
    """The cells of the page's table row that starts with `title`."""
    line = next(ln for ln in page.splitlines() if ln.startswith(f"| {title} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_quick_page_shows_what_the_runs_measured(quick, data_root):
    out, _, _ = quick
    page = (out / "results.md").read_text()
    steps = results.plan(results.QUICK, out, str(data_root))
    assert f"{len(steps)} of {len(steps)} steps measured" in page
    assert "Not measured yet" not in page
    beside = json.loads((out / "results.json").read_text())  # the records travel with the page
    assert beside["budget"] == "quick" and set(beside["records"]) == {s.key for s in steps}
    for step in steps:  # each page command is the process that ran, and it ran from the plan
        record = json.loads((out / "records" / f"{step.key}.json").read_text())
        assert f"`{record['command']}`" in page
        assert shlex.split(record["command"])[1:] == step.argv
    titles = {m.key: m.title for m in results.MODELS}
    vae = table_row(page, titles["vae"])
    evaluation, nll = metrics(out / "vae-eval"), metrics(out / "vae-nll")
    assert vae[1] == f"{nll['test/nll']:.1f}"
    assert vae[2] == f"{evaluation['test/nll']:.1f}"
    assert vae[4] == f"{evaluation['test/fid_domain']:.1f}"
    assert vae[7] == f"{evaluation['test/domain_classifier_acc']:.1%}"
    # The NLL evaluation really used the quick budget's K (the run dir's own config says so).
    nll_config = (out / "vae-nll" / "config.yaml").read_text()
    assert f"iwae_k_test: {results.QUICK.nll_k}\n" in nll_config
    ddpm = table_row(page, titles["ddpm"])
    assert ddpm[3] == f"{metrics(out / 'ddpm-eval')['test/bpd']:.3f}"
    assert ddpm[1] == ddpm[2] == "–"
    ae = table_row(page, titles["ae"])
    assert ae[4] == "–" and ae[8] == f"{metrics(out / 'ae-eval')['test/mse']:.4f}"
    latent = table_row(page, titles["latent_ddpm_ae"])
    assert latent[4] == f"{metrics(out / 'latent_ddpm_ae-eval')['test/fid_domain']:.1f}"
    assert f"autoencoder: {out / 'ae'}" in (out / "latent_ddpm_ae" / "config.yaml").read_text()
    # The grid: test recon and KL of each run, and every trend line decided.
    for beta in results.QUICK.grid_betas:
        for k in results.QUICK.grid_ks:
            run = metrics(out / f"grid-beta{beta}-k{k}")
            cells = table_row(page, f"{beta} | {k}")
            assert cells[2] == f"{run['test/recon']:.4f}" and cells[3] == f"{run['test/kl']:.4f}"
    trends = [ln for ln in page.splitlines() if "grows:" in ln or "confuses classes" in ln]
    assert len(trends) == 2 * len(results.QUICK.grid_ks) + len(results.QUICK.grid_betas)
    # Decided, either way: a 2-batch training need not show seed 002's trends.
    assert all(ln.split(": ")[-1].startswith(("holds", "does not hold")) for ln in trends), trends
    # The sampler curve: one number per sampler at each step count.
    for calls in results.QUICK.curve_steps:
        cells = table_row(page, str(calls))
        assert len(cells) == 1 + len(results.CURVE_SAMPLERS) and "–" not in cells, cells
    check_speedrun(out, page)


def check_speedrun(out: Path, page: str) -> None:
    """Each race's row is its records' numbers; its curve has one point per kept checkpoint,
    at the minutes from the training's start to that checkpoint; the picture shows both."""

    def record(key):
        return json.loads((out / "records" / f"{key}.json").read_text())

    section = page.split("## Speedrun")[1].split("\n## ")[0]
    points = [ln.strip("|").split("|") for ln in section.splitlines() if ln.startswith("| ")]
    points = [[c.strip() for c in row] for row in points]
    points = [row for row in points if row[0][:1].isdigit() and row[1].isdigit()]  # the curve
    for column, race in enumerate(results.RACES):
        train, final = record(f"race-{race.key}.train"), record(f"race-{race.key}-final.quality")
        cells = table_row(page, race.title)
        assert cells[3] == f"{final['metrics']['fid_domain']:.1f}"
        assert f"`{train['command']}`" == cells[5] and cells[6] == final["finished"][:10]
        # The training really took the preset and the speedrun's sampler scored it.
        config = (out / f"race-{race.key}" / "config.yaml").read_text()
        precision = "bf16-mixed" if race.key == "speedrun" else "32-true"
        assert f"  precision: {precision}\n" in config
        assert final["metrics"]["sampler"] == results.RACE_SAMPLER[0]
        assert final["metrics"]["steps"] == results.RACE_SAMPLER[1]
        mine = [row for row in points if row[2 + column]]
        assert [int(row[1]) for row in mine] == [1, 2]
        for row in mine:
            scored = record(f"race-{race.key}-{row[1]}.quality")
            assert row[2 + column] == f"{scored['metrics']['fid_domain']:.1f}"
            minutes = (scored["checkpoint_mtime"] - train["started_at"]) / 60
            assert row[0] == f"{minutes:.1f}" and 0 <= minutes <= train["seconds"] / 60
    from PIL import Image

    picture = Image.open(out / "results-speedrun.png").convert("RGB")
    assert picture.size == (600, 400)
    colours = {c for _, c in picture.getcolors(1 << 20)}
    # matplotlib's first two line colours: both races are drawn.
    assert {(31, 119, 180), (255, 127, 14)} <= colours


def test_a_second_run_skips_what_is_recorded(quick):
    out, args, _ = quick
    checkpoint = out / "vae" / "checkpoints" / "last.ckpt"
    before = checkpoint.stat().st_mtime_ns
    again = run_results(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    ran = [ln for ln in again.stdout.splitlines() if ": python " in ln]
    assert ran == []
    assert again.stdout.count("recorded, skipped") == len(list((out / "records").glob("*.json")))
    assert checkpoint.stat().st_mtime_ns == before


def test_an_unfinished_step_is_redone_and_a_training_resumes(quick):
    """As after a kill: the records of the VAE's training and evaluation are gone, their dirs are
    not. The training continues from its last checkpoint; the evaluation runs again in a fresh
    dir and the first attempt's dir is kept under another name."""
    out, args, _ = quick
    first_eval = metrics(out / "vae-eval")
    for key in ("vae.train", "vae.eval"):
        (out / "records" / f"{key}.json").unlink()
    again = run_results(*args, "--only", "vae.train", "vae.eval")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "vae.train: resuming python train.py" in again.stdout
    assert json.loads((out / "records" / "vae.train.json").read_text())["resumed"] is True
    kept = out / "vae-eval.unfinished-1"
    assert metrics(kept) == first_eval  # nothing of the first attempt is lost
    assert metrics(out / "vae-eval")["test/fid_domain"] == pytest.approx(
        first_eval["test/fid_domain"], rel=1e-4
    )  # the same checkpoint, seed and sizes: the same number
    page = (out / "results.md").read_text()
    assert "(resumed: last attempt only)" in table_row(page, results.MODELS[0].title)[9]


def test_every_command_of_the_full_plan_composes():
    """The full budget is never run in the suite: each of its train.py commands is composed from
    the real conf/ instead, so a key renamed in conf/ fails here, not two hours into a run."""
    from genlab.composition import compose

    steps = results.plan(results.FULL, Path("outputs/results/full"), None)
    assert {s.model for s in steps} >= {m.key for m in results.MODELS}
    for step in steps:
        if step.argv[0] != "train.py":
            assert step.argv[0] == "benchmarks/sample_quality.py"
            continue
        overrides = [a for a in step.argv[1:] if not a.startswith("hydra.")]
        cfg = compose("train", overrides)
        if "evaluate=" in " ".join(overrides):
            assert cfg.evaluate.startswith("outputs/results/full/")
    sizes = {s.key: s.argv for s in steps}
    assert "eval.num_samples=10000" in sizes["vae.eval"]
    assert "eval.iwae_k=5000" in sizes["cvae.nll"]


@pytest.mark.parametrize(
    ("values", "rising", "verdict"),
    [
        ([1.0, 2.0, 3.0], True, "holds"),
        ([1.0, 3.0, 2.0], True, "does not hold"),
        ([3.0, 2.0, 1.0], False, "holds"),
        ([3.0, 3.0, 1.0], False, "does not hold"),
        ([1.0, None, 3.0], True, "not measured yet"),
    ],
)
def test_trend_verdicts(values, rising, verdict):
    assert _trend(values, rising).split(" (")[0] == verdict
