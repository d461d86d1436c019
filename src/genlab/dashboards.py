"""What the dashboards need beyond the curves, so runs can be compared where users look.

- TensorBoard: at the end of a run (training or `evaluate=`), `record_final` writes the HParams
  plugin's records into the run's event file: the run's main hyperparameters and swept keys
  (`run_hparams`) and its final metrics (metrics.json's values, logged once more at the last
  step so the HParams table shows exactly those). Every job of a sweep is then one row of the
  HParams tab of `tensorboard --logdir <sweep dir>`.
- CSV: a run resumed in place (`ckpt_path=last`, a requeued sweep job) continues its newest
  `csv/version_N/metrics.csv` (`CSVLogger`): one curve, without the rows the checkpoint does not
  hold (logged after its step) and without the earlier test rows (the test stage runs again).
  Lightning's own CSV logger would start version_N+1, as its writer deletes an existing file.
- W&B: `metric_summary` says which summary a metric gets (genlab.loggers.WandbLogger declares
  every logged metric with `define_metric` on its step axis): the best value beside the last
  one for curves, the lowest for losses and the highest for ELBO-like numbers.
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("genlab")

# The keys every run shows in the HParams table, beside its sweep's swept keys, where the
# config has them (a DDPM has no beta).
MAIN_KEYS = (
    "model.name",
    "data.name",
    "model.latent_dim",
    "model.beta",
    "model.optimizer.lr",
    "data.batch_size",
    "trainer.max_epochs",
    "seed",
)

# Metric names (the last component, without Lightning's _epoch) whose best value is the highest.
HIGHER_IS_BETTER = frozenset({"elbo", "iwae_bound", "is", "is_domain", "accuracy", "acc"})
# ... and the lowest; any other metric (a learning rate, a count, `epoch`, the KL, which is
# no better for being small) keeps its last value.
LOWER_IS_BETTER = frozenset(
    {"loss", "recon", "mse", "nll", "bpd", "commitment", "codebook"}
    | {"bpd_prior", "bpd_diffusion", "bpd_decoder", "fid", "fid_domain", "kid", "kid_domain"}
)


def metric_summary(name: str) -> str | None:
    """W&B summary of a metric: "min,last" / "max,last" for a curve (train/, val/) whose best
    value is the lowest / highest, None (the last value) for anything else, test metrics too:
    they are logged once."""
    stage, _, leaf = name.rpartition("/")
    if stage not in ("train", "val"):
        return None
    leaf = leaf.removesuffix("_epoch")
    if leaf in LOWER_IS_BETTER:
        return "min,last"
    if leaf in HIGHER_IS_BETTER:
        return "max,last"
    return None


def _scalar(value: Any) -> bool | int | float | str | None:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # a list (image_shape, channel_mults): shown as written


def run_hparams(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """{key: value} of the run's swept keys (a sweep job's, cfg.sweep_job.swept) and MAIN_KEYS,
    as the run used them (config groups, like `model=vae`, by their name)."""
    swept = list(((cfg.get("sweep_job") or {}).get("swept") or {}).keys())
    values: dict[str, bool | int | float | str] = {}
    for key in [*swept, *MAIN_KEYS]:
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):
            value = OmegaConf.select(cfg, f"{key}.name", default=None)
            value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        value = _scalar(value)
        if value is not None and key not in values:
            values[key] = value
    return values


def record_final(loggers: list, cfg: DictConfig, metrics: dict[str, float], step: int) -> None:
    """The HParams records of this run in each TensorBoard logger's event file (rank zero)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    boards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not boards or not metrics:
        return
    # Imported only with a TensorBoard logger: it needs the [tensorboard] extra's package.
    from torch.utils.tensorboard.summary import hparams

    params = run_hparams(cfg)
    experiment, session_start, session_end = hparams(params, metrics)
    for board in boards:
        # The table reads each metric's last scalar: log the final values once more.
        board.log_metrics(metrics, step)
        writer = board.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary, step)
        board.experiment.flush()


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger that continues a run resumed in place (module doc). `resumed`:
    (checkpoint path, its global step) of a resume, else None (Lightning's behaviour)."""

    def __init__(self, *args: Any, resumed: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept_rows: list[dict[str, str]] | None = None
        if resumed is None or kwargs.get("version") is not None:
            return
        path, step = resumed
        root = Path(self.root_dir)
        if not Path(path).resolve().is_relative_to(Path(self.save_dir).resolve()):
            return  # resumed from another run: a curve of its own here
        versions = sorted(
            int(d.name.split("_")[1])
            for d in root.glob("version_*")
            if d.name.split("_")[1].isdigit() and (d / "metrics.csv").is_file()
        )
        if not versions:
            return
        self._version = versions[-1]
        with open(root / f"version_{versions[-1]}" / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        self._kept_rows = [
            row
            for row in rows
            if int(float(row.get("step") or 0)) <= int(step)
            and not any(value for key, value in row.items() if key.startswith("test/"))
        ]

    @property
    def experiment(self):
        from lightning.pytorch.utilities import rank_zero_only

        if self._experiment is not None or self._kept_rows is None or rank_zero_only.rank != 0:
            return super().experiment
        with warnings.catch_warnings():  # "... will be deleted": they are kept, below
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = super().experiment  # Lightning's writer: it has deleted metrics.csv
        kept, self._kept_rows = self._kept_rows, None
        keys = sorted({key for row in kept for key, value in row.items() if value})
        with open(writer.metrics_file_path, "w", newline="") as f:
            table = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            table.writeheader()
            table.writerows(kept)
        writer.metrics_keys = keys  # later rows are appended below them
        log.info(
            "CSV: %s continues (%d rows up to step %s kept).",
            writer.metrics_file_path,
            len(kept),
            max((row.get("step") or "0" for row in kept), key=lambda v: float(v), default="0"),
        )
        return writer
