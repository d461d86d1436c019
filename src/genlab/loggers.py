"""Build the loggers of a run's `logger` config. W&B never blocks: without an API key, offline."""

from __future__ import annotations

import logging
import netrc
import os
import sys

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.run_rules import WANDB_MODES
from genlab.secrets import masked_argv, redact

log = logging.getLogger("genlab")


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode not in WANDB_MODES:
        raise GenlabError(
            f"Invalid config: logger.wandb.mode='{mode}'. "
            f"It must be one of {', '.join(WANDB_MODES)}."
        )
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled") and mode == "auto":
        return "disabled" if os.environ["WANDB_MODE"] == "disabled" else "offline"
    if mode == "auto":
        return "online" if wandb_api_key_available() else "offline"
    return mode


def build_loggers(logger_cfg: DictConfig | None, wandb_resume_id: str | None = None) -> list:
    """Instantiate the entries of `logger_cfg` (the run's `logger` subtree); a W&B logger
    continues run `wandb_resume_id` if given."""
    from hydra.utils import instantiate

    loggers = []
    for key, spec in (logger_cfg or {}).items():
        if spec is None:
            continue
        spec = redact(OmegaConf.to_container(spec, resolve=True))
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise GenlabError(
                f"Invalid config: logger.{key} has no _target_. Choose loggers with "
                "logger=csv, logger=wandb, logger=tensorboard or a list like logger=[csv,wandb]."
            )
        if spec["_target_"].endswith("WandbLogger"):
            mode = resolve_wandb_mode(spec.pop("mode", "auto"))
            if mode == "disabled":
                continue
            if mode == "offline":
                log.warning(
                    "W&B: no API key found (WANDB_API_KEY or `wandb login`), logging offline. "
                    "Upload later with `wandb sync %s/wandb/offline-run-*`.",
                    spec.get("save_dir", "."),
                )
            spec["offline"] = mode == "offline"
            if wandb_resume_id:
                spec["id"], spec["resume"] = wandb_resume_id, "allow"
        logger = instantiate(spec)
        if spec["_target_"].endswith("WandbLogger"):
            with masked_argv():  # W&B records the command line when its run starts
                _ = logger.experiment
        loggers.append(logger)
    return loggers


def finish_loggers(loggers: list) -> None:
    """Close W&B runs so the next job of a sweep starts its own run. Called from a `finally`:
    a run ended by an exception (divergence, interruption) is marked failed in W&B."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)
