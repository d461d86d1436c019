"""What `python train.py` prints: each Lightning line once, no notices genlab cannot act on, and
the final metrics as one table; Hydra's train.log holds the same lines once."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from fixtures import FAST, REPO

# "[time][logger][LEVEL] - message" (Hydra's format) or "LEVEL: message" (Lightning's own).
HYDRA_LINE = re.compile(r"^\[[^\]]+\]\[(?P<name>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$")
PLAIN_LINE = re.compile(r"^(?P<level>INFO|WARNING|ERROR): (?P<msg>.*)$")


@pytest.fixture(scope="module")
def cli_run(data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("console") / "run"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            *FAST,
            "model.mlp.hidden=[64]",
            "model.latent_dim=4",
            f"paths.data_dir={data_root}",
            f"hydra.run.dir={run_dir}",
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr, run_dir


def _messages(text: str) -> list[str]:
    """The message of every log line, whichever handler printed it."""
    found = []
    for line in text.splitlines():
        match = HYDRA_LINE.match(line) or PLAIN_LINE.match(line)
        if match:
            found.append(match["msg"])
    return found


def test_each_lightning_line_is_printed_once(cli_run):
    output, run_dir = cli_run
    lightning = [m for m in _messages(output) if m.startswith(("GPU available", "`Trainer.fit`"))]
    assert len(lightning) == 2, output  # both lines are there ...
    messages = _messages(output)
    repeated = {m for m in messages if messages.count(m) > 1}
    assert not repeated, output  # ... and no line of any logger comes twice
    log_lines = (run_dir / "train.log").read_text().splitlines()
    lightning_in_log = [
        line for line in log_lines if (m := HYDRA_LINE.match(line)) and m["name"] != "genlab"
    ]
    assert lightning_in_log and len(set(lightning_in_log)) == len(lightning_in_log)
    assert any("GPU available" in line for line in lightning_in_log)


def test_no_lightning_tips(cli_run):
    output, run_dir = cli_run
    for text in (output, (run_dir / "train.log").read_text()):
        assert "litlogger" not in text and "💡" not in text


# Lightning prints it from Trainer.save_checkpoint(path) without weights_only and from fit/test
# loading without it; genlab passes it everywhere (full checkpoints saved, weights-only loads).
def test_no_weights_only_notice(cli_run):
    output, run_dir = cli_run
    for text in (output, (run_dir / "train.log").read_text()):
        assert "weights_only" not in text


def test_final_metrics_are_printed_as_one_table(cli_run):
    output, run_dir = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/elbo" in metrics and "val/elbo" in metrics
    lines = output.splitlines()
    (start,) = [i for i, line in enumerate(lines) if "final metrics" in line]
    table = lines[start + 1 : start + 1 + len(metrics)]
    rows = [line.split() for line in table]
    assert [row[0] for row in rows] == sorted(metrics)  # one line per metric, sorted
    for key, value in rows:
        assert float(value) == pytest.approx(metrics[key], rel=1e-5, abs=1e-9), key
    # aligned: every value starts in the same column
    assert len({line.index(value) for line, (_, value) in zip(table, rows, strict=True)}) == 1
    assert sum("final metrics" in line for line in (run_dir / "train.log").open()) == 1


# Silenced by genlab.console.quiet_known_warnings (why: see there); the srun one shows only where
# Slurm's tools are installed (as on CI, which starts a Slurm cluster for tests/test_slurm.py).
NOT_FOR_USERS = ("`isinstance(treespec, LeafSpec)` is deprecated", "`srun` command is available")


def test_no_warnings_meant_for_lightning_developers(cli_run):
    output, run_dir = cli_run
    for text in (output, (run_dir / "train.log").read_text()):
        for notice in NOT_FOR_USERS:
            assert notice not in text, output


def test_real_warnings_still_show(cli_run):
    # 288 training images in batches of 32: nothing of train/loss_step reaches the loggers with
    # log_every_n_steps=50, which a user with so little data wants to know (once).
    output, _ = cli_run
    assert output.count("The number of training batches (9) is smaller than the logging") == 1


def test_lightning_step_count_note_is_dropped():
    from genlab.console import _NO_TIPS

    def record(msg):
        return logging.LogRecord("lightning", logging.INFO, __file__, 1, msg, None, None)

    note = "Loading `train_dataloader` to estimate number of stepping batches."
    assert not _NO_TIPS.filter(record(note))
    assert _NO_TIPS.filter(record("`Trainer.fit` stopped: `max_epochs=1` reached."))


def test_test_stage_progress_reaches_train_log(cli_run):
    # 96 test images in batches of 64: a start line, then the end line with the time taken.
    output, run_dir = cli_run
    log_lines = [
        m["msg"]
        for line in (run_dir / "train.log").read_text().splitlines()
        if (m := HYDRA_LINE.match(line)) and m["name"] == "genlab"
    ]
    start = log_lines.index("testing: 2 batches")
    assert re.fullmatch(r"test: 2/2 batches \(100%\) in [\d.]+ s", log_lines[start + 1])
    assert log_lines.index(next(m for m in log_lines if m.startswith("final metrics"))) > start


def test_the_rich_console_comes_from_a_declared_dependency(compose):
    """Lightning uses rich's progress bar and model summary whenever rich imports (issue 15:
    it arrived only through other packages): genlab declares it, and its trainer gets both."""
    from fixtures import REPO
    from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

    from genlab.builders import build_trainer

    # A dependency line of pyproject.toml's [project] table (tomllib needs Python 3.11).
    assert re.search(r'^\s*"rich[<>=~ ]', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    cfg = compose("trainer.enable_progress_bar=true", "trainer.enable_model_summary=true")
    trainer = build_trainer(cfg.trainer, [], [], validates=True)
    kinds = {type(c) for c in trainer.callbacks}
    assert RichProgressBar in kinds and RichModelSummary in kinds
