"""A multirun command line, checked before any job starts.

`python train.py -m ...` is refused with one readable message (exit code 2, nothing written)
when a swept key does not exist, a value is invalid, a grid is empty, the launcher's tools are
missing (`sbatch` for hydra/launcher=slurm), or the sweeper would optimise a metric the runs never
log. The sweep is expanded with Hydra's own override grammar (sweeper params from a sweep config
plus the command line, last override of a key wins) and the jobs are composed through the
compose API: all of them for grids up to MAX_COMPOSED jobs, else enough jobs that every value of
every swept key is composed at least once (~0.1 s each).
"""

from __future__ import annotations

import shutil
import subprocess
from itertools import product
from typing import Any

from omegaconf import DictConfig, OmegaConf

from genlab import GenlabError
from genlab.extras import require
from genlab.sweep.keys import label, sweeper_param_overrides

MAX_COMPOSED = 24
_GRID = "BasicSweeper"


def _values(override, sweeper: str) -> list[str]:
    """Values of one swept override to compose: every value of a list/range/choice/glob, the
    two ends of an interval (Optuna samples between them)."""
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    value = override.value()  # IntervalSweep
    key = override.get_key_element()
    if _GRID in sweeper:
        raise GenlabError(
            f"{key}={override.input_line.split('=', 1)[1]} is a range for a search, but this "
            "sweep is a grid (Hydra's basic sweeper), which needs a list of values, e.g. "
            f"{key}=1e-3,1e-2,1e-1. For random or Bayesian search use sweep=optuna_vae "
            "(or hydra/sweeper=genlab_optuna)."
        )
    start, end = value.start, value.end
    if start is None or end is None or end < start:
        raise _empty(override)
    if "log" in value.tags and start <= 0:
        raise GenlabError(
            f"{override.input_line}: a log-scale interval needs a start > 0 (got {start})."
        )
    return [str(start), str(end)] if end != start else [str(start)]


def _empty(override) -> GenlabError:
    return GenlabError(
        f"Empty sweep: {override.input_line} gives no values, so the sweep would run nothing. "
        f"Give at least one value, e.g. {override.get_key_element()}=1,2,3 or "
        f"{override.get_key_element()}=range(1,4)."
    )


def _search_space_override(overrides: list[str]) -> None:
    """Refuse `hydra.sweeper.params.<key>=...`: the search space's keys hold dots (model.beta),
    so no override path can name one of them."""
    for text in overrides:
        key, _, value = text.lstrip("+~").partition("=")
        if key.startswith("hydra.sweeper.params."):
            swept = key.removeprefix("hydra.sweeper.params.")
            raise GenlabError(
                f"{text}: the search space cannot be changed key by key under "
                "hydra.sweeper.params (its keys hold dots). Give the key and its range on the "
                f"command line instead: {swept}={value or '<range>'}, e.g. "
                f"'{swept}=tag(log,interval(1e-4,1))' or '{swept}=choice(2,4,8)' for Optuna, "
                f"'{swept}=1e-3,1e-2' for a grid; it replaces that key's entry of the sweep config."
            )


def _optuna_sweeper(hydra: DictConfig) -> None:
    """Hydra's own Optuna sweeper ends its search at the first failed trial (#2237)."""
    sweeper = str(OmegaConf.select(hydra, "sweeper._target_", default="") or "")
    if sweeper.startswith("hydra_plugins.hydra_optuna_sweeper."):
        raise GenlabError(
            "hydra/sweeper=optuna is Hydra's Optuna sweeper, whose search ends at the first "
            "failed or diverged trial (facebookresearch/hydra#2237). Use "
            "hydra/sweeper=genlab_optuna: the same settings, failed trials recorded as failed "
            "and the search going on (sweep=optuna_vae uses it)."
        )


def _launcher_tools(hydra: DictConfig) -> None:
    target = str(OmegaConf.select(hydra, "launcher._target_", default="") or "")
    choice = OmegaConf.select(hydra, "runtime.choices", default={}) or {}
    name = choice.get("hydra/launcher", target)
    submitit = "submitit" in target or "Slurm" in target or "slurm" in str(name)
    if submitit:
        require("slurm", f"hydra/launcher={name}")
    if target.endswith("SlurmLauncher"):
        missing = [tool for tool in ("sbatch", "sacct", "scancel") if shutil.which(tool) is None]
        if missing:
            raise GenlabError(
                f"hydra/launcher={name} submits jobs to Slurm, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not on PATH here. Run the sweep on a "
                "Slurm login node, or use hydra/launcher=local_parallel (several jobs at once on "
                "this machine) or no launcher option (one job after another)."
            )
        down = _controller_problem()
        if down:
            raise GenlabError(
                f"hydra/launcher={name}: the Slurm controller does not answer ({down}), so no "
                "job can be submitted. Check the cluster (`sinfo`, `scontrol ping`) or ask its "
                "admins, then run the sweep again; or use hydra/launcher=local_parallel here."
            )
    sweeper = str(OmegaConf.select(hydra, "sweeper._target_", default="") or "")
    if "optuna" in sweeper.lower():
        require("optuna", "hydra/sweeper=optuna")


def _controller_problem() -> str | None:
    """What `scontrol ping` says when slurmctld is down or unreachable; None when it is up or
    the answer says something else (an sbatch that then fails is refused by the launcher)."""
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`scontrol ping` got no answer within 20 s"
    except OSError:
        return None
    text = " ".join((out.stdout + " " + out.stderr).split())
    if " DOWN" in text or "Unable to contact" in text:
        return f"`scontrol ping`: {text or f'exit code {out.returncode}'}"
    return None


def _is_ddp(trainer: DictConfig) -> bool:
    strategy = str(trainer.get("strategy", "auto")).lower()
    return "ddp" in strategy and "spawn" not in strategy and "fork" not in strategy


def _on_slurm(hydra: DictConfig) -> bool:
    return str(OmegaConf.select(hydra, "launcher._target_", default="")).endswith("SlurmLauncher")


# Strategies whose ranks all live on one machine: Lightning starts them there (spawn, fork,
# notebook) or there is one process (single_device, dp). Under Slurm every rank is a task.
_ONE_MACHINE = ("spawn", "fork", "notebook", "single")


def _one_machine(strategy: Any) -> bool:
    return isinstance(strategy, str) and (
        strategy == "dp" or any(word in strategy for word in _ONE_MACHINE)
    )


def _partition_nodes(partition: str | None) -> tuple[str, int] | None:
    """(name, node count) of the Slurm partition the jobs go to (the cluster's default for
    None; the largest of a comma list), from `scontrol show partition`; None when Slurm cannot
    tell (no scontrol here, no answer), so that the check never blocks a sweep on its own."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "partition", "--oneliner"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found = {}
    for line in out.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "PartitionName" in fields and fields.get("TotalNodes", "").isdigit():
            found[fields["PartitionName"]] = (int(fields["TotalNodes"]), fields.get("Default"))
    if partition is None:
        default = [(name, n) for name, (n, is_default) in found.items() if is_default == "YES"]
        return default[0] if default else None
    names = [name.strip() for name in str(partition).split(",") if name.strip()]
    unknown = [name for name in names if name not in found]
    if unknown:
        raise GenlabError(
            f"hydra.launcher.partition={partition}: this Slurm cluster has no partition "
            f"{', '.join(unknown)}. Its partitions: {', '.join(sorted(found)) or 'none'} "
            "(`sinfo -s`); drop the key for the default one."
        )
    return max(((name, found[name][0]) for name in names), key=lambda item: item[1])


def _slurm_layout(cfg: DictConfig, where: str, partitions: dict | None = None) -> None:
    """One Slurm task per DDP rank: tasks per node must equal trainer.devices, a job of several
    nodes needs a strategy whose ranks can be Slurm tasks on other machines, and no more nodes
    than its partition has (Slurm would refuse the array, or hold the job forever).
    `partitions` caches the partition sizes across the jobs of one sweep."""
    hydra = cfg.hydra
    if not _on_slurm(hydra):
        return
    trainer = cfg.trainer
    devices = trainer.get("devices", 1)
    tasks = OmegaConf.select(hydra, "launcher.tasks_per_node", default=1)
    nodes = OmegaConf.select(hydra, "launcher.nodes", default=1)
    num_nodes = trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or devices < 1:
        raise GenlabError(
            f"trainer.devices={devices}{where}: with hydra/launcher=slurm give the number of "
            "devices (processes) per node, e.g. trainer.devices=4; Slurm starts one task per "
            "device."
        )
    multi_node = num_nodes > 1  # (validate_run_config has checked it is an int >= 1)
    if (devices > 1 or multi_node or _is_ddp(trainer)) and tasks != devices:
        raise GenlabError(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices}{where}: under "
            "Slurm each DDP rank is a Slurm task, so they must be equal. Drop the "
            "tasks_per_node override (it follows trainer.devices)."
        )
    if nodes != num_nodes:
        raise GenlabError(
            f"hydra.launcher.nodes={nodes} but trainer.num_nodes={num_nodes}"
            f"{where}: they must be equal (drop the nodes override, it follows num_nodes)."
        )
    strategy = trainer.get("strategy", "auto")
    if multi_node and _one_machine(strategy):
        raise GenlabError(
            f"trainer.strategy={strategy} cannot span trainer.num_nodes={num_nodes} nodes"
            f"{where}: its ranks all run on one machine, but on Slurm each rank is a task on "
            "its own node. Use trainer.strategy=ddp (or auto, fsdp, deepspeed)."
        )
    if not multi_node:
        return
    partition = OmegaConf.select(hydra, "launcher.partition", default=None)
    cache = {} if partitions is None else partitions
    if partition not in cache:
        cache[partition] = _partition_nodes(partition)
    if cache[partition] is not None and num_nodes > cache[partition][1]:
        name, available = cache[partition]
        raise GenlabError(
            f"trainer.num_nodes={num_nodes}{where}, but the Slurm partition {name} has "
            f"{available} node{'s' if available != 1 else ''}: Slurm would refuse the job. "
            f"Give trainer.num_nodes<={available}, or a partition with more nodes "
            "(hydra.launcher.partition=<name>; `sinfo -s` lists them)."
        )


# Per-image terms VAEs compute only on val/test (the importance-sampled likelihood of
# genlab.models.vae.eval_terms), each stage only with model.iwae_k_<stage> > 0.
IWAE_TERMS = ("nll", "bpd")


def _runs_stage(cfg: DictConfig, limit_key: str) -> bool:
    limit = cfg.trainer.get(limit_key)
    return limit is None or limit != 0


def logged_metrics(cfg: DictConfig) -> set[str] | None:
    """The metric names `genlab.training.run(cfg)` returns (what train.py hands the sweeper and
    writes to metrics.json), None when the model cannot be built. Single-step curves
    (train/loss_step, train/lr) are not among them: run() leaves them out."""
    from genlab.builders import build_model

    try:
        # Built once per sweep (the last job's config): whether it samples is its capabilities'
        # answer, which depends on its config (a CVAE's or DDPM's conditioning, say).
        model = build_model(cfg)
    except Exception:
        return None
    cls = type(model)
    names = tuple(getattr(cls, "metric_names", ("loss",)))
    if (cfg.model.get("iwae_k_train", 1) or 1) <= 1:  # the IWAE training bound: only with K > 1
        names = tuple(n for n in names if n != "iwae_bound")
    iwae = tuple(n for n in names if n in IWAE_TERMS)
    # Training logs the epoch means of the loss (as loss_epoch) and of compute_terms' terms.
    metrics = {"train/loss_epoch"} | {f"train/{n}" for n in names if n not in (*iwae, "loss")}

    def evaluated(stage: str) -> set[str]:
        k = cfg.model.get(f"iwae_k_{stage}", 0) or 0
        return {f"{stage}/{n}" for n in names if n not in iwae or k > 0}

    if (cfg.data.get("val_fraction", 0.1) or 0) > 0 and _runs_stage(cfg, "limit_val_batches"):
        metrics |= evaluated("val")
    if cfg.get("test", True) and _runs_stage(cfg, "limit_test_batches"):
        metrics |= evaluated("test")
        bpd_images = cfg.model.get("test_bpd_images", None)
        if bpd_images is None or bpd_images > 0:  # a DDPM's variational bound, in bits/dim
            metrics |= {f"test/{n}" for n in cls.spec_class.test_metric_names}
        quality = cfg.get("eval") or {}
        if quality.get("sample_quality") and model.capabilities.generative:
            spaces = []
            if quality.get("domain"):
                spaces.append("_domain")
                metrics.add("test/domain_classifier_acc")
            if quality.get("inception_weights") is not None:
                spaces.append("")
            for tag in spaces:
                metrics |= {f"test/{m}{tag}" for m in ("fid", "kid", "is", "quality_samples")}
    return metrics


def _check_metric(cfg: DictConfig, where: str) -> None:
    import difflib

    from genlab.models.base import STEP_METRICS

    name = cfg.get("optimize_metric")
    known = logged_metrics(cfg)
    if known is None:
        return
    if not name or name not in known:
        if str(name) in (*STEP_METRICS, "train/loss") and "train/loss_epoch" in known:
            hint = (
                f" Values of single steps ({', '.join(STEP_METRICS)}) are curves, not results; "
                "the training loss a run returns is the epoch mean. Did you mean "
                "'train/loss_epoch'?"
            )
        else:
            close = difflib.get_close_matches(str(name), sorted(known), n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise GenlabError(
            f"optimize_metric={name}{where} is not a metric this run logs, so the sweeper would "
            f"get nothing to optimise.{hint} A {cfg.model.get('name')} run logs: "
            f"{', '.join(sorted(known))}."
        )


def check_multirun(argv: list[str], config_name: str) -> None:
    """Raise GenlabError when the sweep in `argv` (with -m) cannot run as asked."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from genlab.composition import (
        compose,
        friendly_message,
        hydra_context,
        override_syntax_message,
    )
    from genlab.run_rules import validate_run_config
    from genlab.sweep.keys import overrides_parser

    overrides = [a for a in argv if not a.startswith("-")]
    _search_space_override(overrides)
    with hydra_context() as loader:
        parser = overrides_parser(loader)

        def parse(items: list[str]):
            try:
                return parser.parse_overrides(items)
            except (HydraException, ValueError) as err:
                lines = [line for line in str(err).strip().splitlines() if line.strip()]
                if "empty choice" in str(err):
                    bad = lines[0].split("'", 1)[-1].rstrip("'")
                    raise GenlabError(
                        f"Empty sweep: {bad} gives no values, so the sweep would run nothing. "
                        "Give at least one value, e.g. choice(1,2,3)."
                    ) from None
                grammar = override_syntax_message(err, items)
                if grammar:
                    raise GenlabError(grammar) from None
                raise GenlabError(". ".join(lines[:2])) from None

        def composed(ov: list[str], where: str = ""):
            try:
                return compose(config_name, ov, return_hydra_config=True, user_plugins=True)
            except (HydraException, OmegaConfBaseException, ValueError) as err:
                raise GenlabError(friendly_message(err, ov, config_name) + where) from None

        command_line = parse(overrides)
        # The first value of each swept key: enough to compose the sweep config and read
        # hydra.sweeper / hydra.launcher.
        first = []
        for o in command_line:
            if o.is_sweep_override():
                values = _values(o, "")
                if not values:
                    raise _empty(o)
                first.append(f"{o.get_key_element()}={values[0]}")
            else:
                first.append(o.input_line)
        base = composed(first)
        hydra = base.hydra
        sweeper = str(OmegaConf.select(hydra, "sweeper._target_", default="") or "")
        _launcher_tools(hydra)
        _optuna_sweeper(hydra)

        params = sweeper_param_overrides(OmegaConf.select(hydra, "sweeper.params"))
        final: dict[str, Any] = {}
        for o in parse(params) + command_line:
            final[o.key_or_group] = o  # the last override of a key wins, as in Hydra
        swept = {k: o for k, o in final.items() if o.is_sweep_override()}
        fixed = [o.input_line for k, o in final.items() if k not in swept]
        values = {}
        for key, o in swept.items():
            values[key] = _values(o, sweeper)
            if not values[key]:
                raise _empty(o)
        if _GRID not in sweeper:
            trials = OmegaConf.select(hydra, "sweeper.n_trials", default=1)
            if isinstance(trials, int) and trials < 1:
                raise GenlabError(
                    f"hydra.sweeper.n_trials={trials}: the search would run nothing; give n_trials "
                    ">= 1."
                )

        keys = list(swept)
        grid = list(product(*[values[k] for k in keys]))
        if len(grid) > MAX_COMPOSED:  # each value of each key once, not every combination
            width = max(len(values[k]) for k in keys)
            grid = [tuple(values[k][i % len(values[k])] for k in keys) for i in range(width)]
        optimizing = _GRID not in sweeper or any(
            o.key_or_group == "optimize_metric" for o in command_line
        )
        partitions: dict = {}  # asked once per sweep
        for combo in grid:
            job = [f"{swept[k].get_key_element()}={v}" for k, v in zip(keys, combo, strict=True)]
            text = label(dict(zip(keys, combo, strict=True)))
            where = f" (in the sweep job {text})" if text else ""
            cfg = composed(fixed + job, where)
            try:
                if config_name == "train":  # Slurm jobs run on other nodes, with their GPUs
                    validate_run_config(cfg, local=not _on_slurm(cfg.hydra))
            except GenlabError as err:
                raise GenlabError(f"{err}{where}") from None
            if config_name == "train":
                _slurm_layout(cfg, where, partitions)
        if optimizing and config_name == "train":
            _check_metric(cfg, "")
