"""Progress lines of long stages on the "genlab" logger (what train.log shows while the test
stage runs): a real tiny run, and the throttle and `report` on a fake clock."""

import logging
import re

import pytest

import genlab.progress as progress
from genlab.training import run

PROGRESS = re.compile(r"^test: (\d+)/(\d+) batches \((\d+)%\), [\d.]+ (s|min).* elapsed, ~.+ left$")


def _genlab_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "genlab"]


def test_test_stage_logs_start_progress_and_end(compose, monkeypatch, caplog):
    # No time throttle: a line every 10% of the batches (here every 2 of 12).
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="genlab")
    cfg = compose(
        "model=ae",
        "model.mlp.hidden=[64]",
        "data.eval_batch_size=8",  # the 96 test images in 12 batches
        "save_images=false",
    )
    run(cfg)
    messages = _genlab_messages(caplog)
    start = messages.index("testing: 12 batches")
    (end,) = [i for i, m in enumerate(messages) if m.startswith("test: 12/12 batches (100%) in ")]
    middle = [(i, PROGRESS.match(m)) for i, m in enumerate(messages) if PROGRESS.match(m)]
    assert middle, messages
    assert all(start < i < end for i, _ in middle)
    counts = [int(m[1]) for _, m in middle]
    assert counts == sorted(set(counts)) and counts[0] >= 2 and counts[-1] < 12
    assert all(int(m[2]) == 12 and int(m[3]) == 100 * int(m[1]) // 12 for _, m in middle)
    # Validation (4 batches of the 32 held-out images) reports too once it is slower than
    # EVERY_S (0 here): progress and end lines, no start line.
    assert any(re.match(r"validation: \d/4 batches \(\d+%\)", m) for m in messages), messages
    assert any(m.startswith("validation: 4/4 batches (100%) in ") for m in messages)
    assert not any(m.startswith("validation: 4 batches") for m in messages)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    monkeypatch.setattr(progress, "_PASSES", {})
    return fake


def test_a_line_needs_both_a_tenth_of_the_work_and_the_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger="genlab")
    p = progress.Progress("test", 100, "batches", every_fraction=0.1, every_s=30)
    for done in range(1, 100):
        clock.now += 1  # 1 s per batch: 30 s come later than 10 batches
        p.update(done)
    lines = _genlab_messages(caplog)
    assert lines[0] == "test: 30/100 batches (30%), 30 s elapsed, ~1 min 10 s left"
    assert [int(m.split()[1].split("/")[0]) for m in lines] == [30, 60, 90]
    caplog.clear()
    p = progress.Progress("test", 100, "batches", every_fraction=0.1, every_s=30)
    for done in range(1, 100):
        clock.now += 10  # 10 s per batch: the tenth comes later
        p.update(done)
    assert len(_genlab_messages(caplog)) == 9


def test_report_throttles_each_stage_and_restarts_a_pass(clock, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="genlab")
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    progress.report("sampling", 0, 1000, unit="images")
    progress.report("features", 0, 10)  # a second stage in between keeps its own pass
    for done in range(100, 1001, 100):
        clock.now += 2
        progress.report("sampling", done, 1000, unit="images")
    messages = _genlab_messages(caplog)
    assert messages[:2] == ["sampling: 1000 images", "features: 10"]
    assert messages[2] == "sampling: 100/1000 images (10%), 2.0 s elapsed, ~18 s left"
    assert len(messages) == 2 + 9 + 1
    assert messages[-1] == "sampling: 1000/1000 images (100%) in 20 s"
    caplog.clear()
    progress.report("sampling", 0, 1000, unit="images")  # the next run's pass
    assert _genlab_messages(caplog) == ["sampling: 1000 images"]


def test_report_logs_nothing_on_other_ranks(clock, caplog, monkeypatch):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    caplog.set_level(logging.INFO, logger="genlab")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    for done in range(0, 11):
        progress.report("sampling", done, 10)
    assert not _genlab_messages(caplog)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.42, "0.4 s"), (41.4, "41 s"), (125, "2 min 05 s"), (3725, "1 h 02 min")],
)
def test_durations_read_as_time(seconds, text):
    assert progress.duration(seconds) == text
