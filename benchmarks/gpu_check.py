"""The GPU check: one prepared command for a lent, bare GPU machine (issue 17).

    python3 benchmarks/gpu_check.py --wheels wheels     # on the GPU machine, carry: [wheels]
    python benchmarks/gpu_check.py --dry-run --out-dir /tmp/x   # here: the same stages on CPU

The GPU machine has torch, lightning and torchvision but not Hydra or pytest, reaches no package
registry and has no datasets; it is lent for minutes. So this script installs what is missing
from a carried wheel folder (benchmarks/make_wheels.py fills it) into a folder of its own, writes
its own data in the genuine file formats, and then runs every stage within a time budget (8
minutes in all); a stage that fails or overruns is recorded and the next one runs:

    install             pip install --no-index --no-deps --target from the wheel folder
    data                Fashion-MNIST-shaped IDX gzip files, staged by genlab's own loader
    a cuda_tests        pytest -m cuda
    b train_runs        train.py, every model trained on images (latent_ddpm, which trains on
                        another run's codes, is not), bf16-mixed and 16-mixed: exit 0,
                        checkpoint, metrics
    e flops             FLOPs of one training step (FlopCounterMode, forward + backward)
    c unet_training     paper U-Net steps/s at batch 128: fp32, bf16, + compile, + channels_last,
                        genlab's Lightning loop against a plain PyTorch loop
    c unet_sampling     DDIM-50 against ancestral sampling (T = 1000) at that size
    d latent_throughput VAE / AE images/s with the data on the device, against the plain loop
    f (report)          docs/benchmarks-gpu.md and docs/benchmarks-gpu.json, copied
                        into $OUT when it is set; model FLOP utilisation beside each figure

`--dry-run` runs the same stages on CPU at tiny sizes (a tiny U-Net, 1-2 steps, precision
32-true / bf16-mixed, compile with dynamo's eager backend: inductor needs minutes on a CPU), and
replaces the install by a check that the wheel folder can satisfy it. Its report goes to
`--out-dir` (default: a new temp folder, never docs/) and its first line says DRY RUN.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling benchmark modules, when imported from a test

import gpu_stages  # noqa: E402
from gpu_stages import OverBudget, tail, time_left  # noqa: E402
from make_wheels import MODULES, PACKAGES, PLATFORMS, TARGET  # noqa: E402

TOTAL_BUDGET_S = 480.0  # the GPU machine runs one command for at most 10 minutes
MIN_STAGE_S = 3.0  # a stage with less time than this left is not started
DRY_RUN_BUDGET_SCALE = 3


@dataclass
class Settings:
    """Everything the GPU run and the dry run do differently: sizes and the device, never code."""

    dry_run: bool
    device: str
    trainer: str
    train_runs: list[tuple[str, str]]
    train_overrides: dict[str, list[str]]  # model (or "*" for every model) -> overrides
    parallel_runs: int
    n_train: int
    n_test: int
    unet_kind: str
    unet_data: str
    unet_batch: int
    unet_steps: int
    repeats: int
    compile_repeats: int
    compile_backend: str | None
    sample_batch: int
    ddim_steps: int
    ancestral_subset: int
    latent_cases: list[tuple[str, str, str, int]]
    latent_steps: int
    latent_repeats: int
    budgets: dict[str, float] = field(default_factory=dict)
    unet_configs: list[str] = field(default_factory=list)  # empty: every UNET_CONFIGS entry


MODELS = ("ae", "vae", "cvae", "vqvae", "ddpm")
BUDGETS = {  # seconds per stage; they add up to TOTAL_BUDGET_S less a margin for the report
    # As measured on an H100 (docs/benchmarks-gpu.md): pytest's start there plus one
    # torch.compile overran 30 s, FlopCounterMode on the paper U-Net overran 15 s, and three of
    # the four U-Net configurations took 238 s; train_runs took 59 s and sampling 6 s.
    "install": 15,
    "data": 20,
    "cuda_tests": 75,
    "train_runs": 70,
    "flops": 40,
    "unet_training": 195,
    "unet_sampling": 20,
    "latent_throughput": 40,
}


def settings(dry_run: bool) -> Settings:
    if not dry_run:
        return Settings(
            dry_run=False,
            device="cuda",
            trainer="gpu",
            train_runs=[(m, p) for m in MODELS for p in ("bf16-mixed", "16-mixed")],
            train_overrides={},
            parallel_runs=4,
            n_train=60000,
            n_test=10000,
            unet_kind="ddpm_paper",
            unet_data="cifar10",
            unet_batch=128,
            unet_steps=50,
            repeats=2,
            compile_repeats=1,  # each compiled run recompiles (tens of seconds): one pair
            compile_backend=None,
            sample_batch=128,
            ddim_steps=50,
            ancestral_subset=100,
            latent_cases=[
                ("vae MLP fashion_mnist", "vae", "fashion_mnist", 256),
                ("ae MLP fashion_mnist", "ae", "fashion_mnist", 256),
                ("conv VAE cifar10-shaped", "conv_vae", "cifar10", 128),
            ],
            latent_steps=200,
            latent_repeats=3,
            budgets=dict(BUDGETS),
        )
    # A CPU has no fp16 autocast in Lightning and emulates bf16 slowly: each model runs once,
    # the precisions alternating, so both kinds of run are exercised in about a minute.
    tiny_ddpm = ["model.timesteps=50", "model.sample_steps=5", "model.preview_steps=5"]
    tiny_ddpm += ["model.unet.base_channels=8", "model.unet.channel_mults=[1,2]"]
    tiny_ddpm += ["model.warmup_steps=1"]
    return Settings(
        dry_run=True,
        device="cpu",
        trainer="cpu",
        train_runs=[("ae", "bf16-mixed"), ("vae", "32-true"), ("cvae", "bf16-mixed")]
        + [("vqvae", "32-true"), ("ddpm", "32-true")],
        train_overrides={"*": ["data.batch_size=16", "data.eval_batch_size=32"], "ddpm": tiny_ddpm},
        parallel_runs=2,
        n_train=512,
        n_test=128,
        unet_kind="ddpm_tiny",
        unet_data="fashion_mnist",
        unet_batch=2,
        unet_steps=2,
        repeats=1,
        compile_repeats=1,
        compile_backend="eager",
        sample_batch=2,
        ddim_steps=50,
        ancestral_subset=25,  # the linear schedule needs T > 20 (beta_T = 0.02 * 1000 / T)
        latent_cases=[
            ("vae MLP fashion_mnist", "vae", "fashion_mnist", 32),
            ("ae MLP fashion_mnist", "ae", "fashion_mnist", 32),
        ],
        latent_steps=2,
        latent_repeats=1,
        # Shared 2-core machines run this several times slower than it needs: generous budgets,
        # so that the dry run tests the stages, not the machine's load.
        budgets={k: DRY_RUN_BUDGET_SCALE * v for k, v in BUDGETS.items()},
    )


@dataclass
class Context:
    """What the stages share: the settings, the scratch folder, the paths to put first on
    sys.path / PYTHONPATH, and the results each stage fills in as it goes (so a stage stopped
    over budget keeps what it measured)."""

    cfg: Settings
    work: Path
    wheels: Path | None
    site: Path
    data: Path
    results: dict

    def pythonpath(self) -> str:
        # The tree's src/ first: the check measures the code that travelled, even if the
        # carried genlab wheel was built from an older commit.
        parts = [str(REPO / "src"), str(self.site), os.environ.get("PYTHONPATH", "")]
        return os.pathsep.join(p for p in parts if p)

    def env(self) -> dict:
        return {
            **os.environ,
            "PYTHONPATH": self.pythonpath(),
            "GENLAB_DATA_DIR": str(self.data),
            "WANDB_MODE": "disabled",
        }


# -- stage running -----------------------------------------------------------------------------
def _alarm(signum, frame):
    raise OverBudget


def run_stage(name: str, fn, ctx: Context, deadline: float) -> dict:
    """Run one stage under its budget (cut to what is left of the total). Never raises: the
    record says ok, failed (with the error's last lines) or skipped."""
    budget = min(ctx.cfg.budgets.get(name, 30.0), deadline - time.monotonic())
    record = {"stage": name, "budget_s": round(max(budget, 0.0), 1), "seconds": 0.0}
    if budget < MIN_STAGE_S:
        record["status"] = "skipped: over budget (the total was spent)"
        return record
    start = time.monotonic()
    ctx.results["stage_deadline"] = start + budget
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        note = fn(ctx)
        record["status"] = "ok"
        if note:
            record["note"] = note
    except OverBudget:
        record["status"] = "skipped: over budget"
        record["note"] = f"stopped after {budget:.0f} s; what it measured before is kept"
    except Exception as err:  # noqa: BLE001 - a failed stage never stops the others
        record["status"] = "failed"
        record["error"] = tail(f"{''.join(traceback.format_exception(err))}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        record["seconds"] = round(time.monotonic() - start, 1)
    print(f"[gpu_check] {name}: {record['status']} ({record['seconds']} s)", flush=True)
    return record


# -- install -----------------------------------------------------------------------------------
def missing_modules() -> list[str]:
    """Modules of MODULES this interpreter cannot import (without the tree's src/)."""
    missing = []
    for module in MODULES:
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            missing.append(module)
    return missing


def wheel_requirements(modules: list[str]) -> list[str]:
    dists = sorted({MODULES[m] for m in modules})
    return [f"{d}=={PACKAGES[d]}" if d in PACKAGES else d for d in dists]


def install(ctx: Context) -> str:
    """Install what is missing into ctx.site (never into the machine's site-packages, whose
    torch must stay); in a dry run only check that the wheel folder could do it."""
    missing = ctx.results["install"]["missing_before"]
    if ctx.cfg.dry_run:
        missing = list(MODULES)  # the check is of the folder: resolve everything
    elif not missing:
        return "everything importable already: nothing installed"
    if ctx.wheels is None or not ctx.wheels.is_dir():
        msg = f"no wheel folder {ctx.wheels}: run python benchmarks/make_wheels.py"
        if ctx.cfg.dry_run:
            ctx.results["install"]["skipped"] = msg
            return f"skipped: {msg}"
        raise RuntimeError(f"{', '.join(missing)} not importable and {msg}, carry it")
    reqs = wheel_requirements(missing)
    target = ctx.work / "dry-run-target" if ctx.cfg.dry_run else ctx.site
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps"]
    cmd += ["--disable-pip-version-check", "--find-links", str(ctx.wheels)]
    if ctx.cfg.dry_run:  # resolve for the GPU machine's interpreter, not this one
        cmd += ["--dry-run", *TARGET, "--only-binary=:all:"]
        cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd += ["--target", str(target), *reqs]
    ctx.results["install"]["command"] = " ".join(cmd)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=time_left(ctx) - 1)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{tail(result.stdout + result.stderr)}")
    if not ctx.cfg.dry_run:
        sys.path[:0] = [str(REPO / "src"), str(ctx.site)]
        importlib.invalidate_caches()
        still = missing_modules()
        if still:
            raise RuntimeError(f"installed, but still not importable: {', '.join(still)}")
    ctx.results["install"]["installed"] = reqs
    return ("resolved from the wheel folder: " if ctx.cfg.dry_run else "installed: ") + (
        ", ".join(reqs)
    )


# -- data --------------------------------------------------------------------------------------
def write_data(ctx: Context) -> str:
    """Fashion-MNIST-shaped data in the genuine gzipped IDX files, in <data>/FashionMNIST/raw
    (where genlab looks first, and reads them gzipped). Every image carries its class (a
    template per class plus noise), so the CVAE's labels mean something."""
    import numpy as np

    from genlab.data.formats import write_idx
    from genlab.data.sources import load_split

    src = ctx.data / "FashionMNIST" / "raw"
    src.mkdir(parents=True, exist_ok=True)
    templates = np.random.default_rng(1234).random((10, 28, 28)) > 0.6
    for split, n, seed in (("train", ctx.cfg.n_train, 0), ("t10k", ctx.cfg.n_test, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        noise = rng.integers(0, 50, size=(n, 28, 28), dtype=np.uint8)
        images = (templates[labels] * 200 + noise).astype(np.uint8)
        write_idx(src / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(src / f"{split}-labels-idx1-ubyte.gz", labels)
    for train in (True, False):
        images, labels = load_split(
            "fashion_mnist", ctx.data, train=train, system_dirs=[src], download=False
        )
    os.environ["GENLAB_DATA_DIR"] = str(ctx.data)  # where benchmarks/loops.py looks
    return f"{ctx.cfg.n_train} + {ctx.cfg.n_test} images in {ctx.data}"


# -- the command -------------------------------------------------------------------------------
def stages():
    return {
        "install": install,
        "data": write_data,
        "cuda_tests": gpu_stages.cuda_tests,
        "train_runs": gpu_stages.train_runs,
        "flops": gpu_stages.flops,
        "unet_training": gpu_stages.unet_training,
        "unet_sampling": gpu_stages.unet_sampling,
        "latent_throughput": gpu_stages.latent_throughput,
    }


def environment(cfg: Settings) -> dict:
    import torch
    from harness import versions

    try:
        info = versions(cfg.device)
    except Exception as err:  # noqa: BLE001 - lightning missing is a finding, not a crash
        info = {"torch": torch.__version__, "device": cfg.device, "error": str(err)}
    info["cuda_available"] = torch.cuda.is_available()
    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


RESULT_KEYS = {  # stage -> the key of ctx.results it fills
    "install": "install",
    "cuda_tests": "cuda_tests",
    "train_runs": "train_runs",
    "flops": "flops",
    "unet_training": "unet_training",
    "unet_sampling": "unet_sampling",
    "latent_throughput": "latent_throughput",
}


def take_previous(previous: dict, records: list[dict], results: dict) -> list[dict]:
    """One report from a short rerun and the run before it: every stage this run did not run
    (and every U-Net configuration it did not time) comes from `previous`, marked as such."""
    ran = {r["stage"] for r in records}
    merged = []
    for old in previous["stages"]:
        name = old["stage"]
        if name in ran:
            merged.append(next(r for r in records if r["stage"] == name))
            continue
        merged.append({**old, "note": f"from the previous run; {old.get('note', '')}".strip()})
        key = RESULT_KEYS.get(name)
        if key and key in previous:
            results[key] = previous[key]
    if "unet_training" in ran and previous.get("unet_training"):
        timed = {row["config"] for row in results.get("unet_training", [])}
        earlier = [r for r in previous["unet_training"] if r["config"] not in timed]
        results["unet_training"] = earlier + results.get("unet_training", [])
    results["combined_with"] = previous.get("argv", "") or "an earlier run"
    return merged


def report_folder(out_dir: str | None, dry_run: bool) -> Path:
    """Where the report goes: --out-dir, else docs/ for a GPU run. A dry run never lands in
    docs/ by default (its numbers would read as a measurement): a new temp folder instead."""
    if out_dir:
        return Path(out_dir)
    if dry_run:
        return Path(tempfile.mkdtemp(prefix="genlab-gpu-dry-run-"))
    return REPO / "docs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", default=str(REPO / "wheels"), help="carried wheel folder")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no install")
    parser.add_argument(
        "--out-dir",
        default=None,
        help="report folder (default: docs/ for a GPU run; a dry run's goes to a new temp folder)",
    )
    parser.add_argument(
        "--total-budget", type=float, default=None, help=f"seconds (default {TOTAL_BUDGET_S:g})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help="another budget for a stage (repeatable)",
    )
    parser.add_argument(
        "--unet-configs",
        default=None,
        help="comma-separated U-Net configurations to time (default: all of them)",
    )
    parser.add_argument(
        "--previous",
        default=None,
        help="benchmarks-gpu.json of an earlier run: the stages (and U-Net configurations) this "
        "run skips are taken from it, so a short rerun completes one report",
    )
    parser.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (install and data always run): a short rerun of "
        "the ones that failed, when device time is short",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    cfg = settings(args.dry_run)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in BUDGETS or not seconds:
            parser.error(
                f"--budget {item!r}: use STAGE=SECONDS with a stage of {', '.join(BUDGETS)}"
            )
        cfg.budgets[name] = float(seconds)
    if args.unet_configs:
        cfg.unet_configs = args.unet_configs.split(",")
        known = [name for name, _ in gpu_stages.UNET_CONFIGS]
        if not set(cfg.unet_configs) <= set(known):
            parser.error(f"--unet-configs: choose among {', '.join(known)}")
    total = args.total_budget or TOTAL_BUDGET_S * (DRY_RUN_BUDGET_SCALE if cfg.dry_run else 1)
    deadline = started + total
    work = Path(tempfile.mkdtemp(prefix="genlab-gpu-check-"))
    wheels = Path(args.wheels).resolve() if args.wheels else None
    # Asked before src/ goes on sys.path: is genlab installed, not merely in the tree?
    ctx = Context(cfg, work, wheels, work / "site", work / "data", {})
    ctx.results["install"] = {"missing_before": missing_modules()}
    sys.path.insert(0, str(REPO / "src"))  # in-process stages measure the tree, as subprocesses
    import torch

    if cfg.device == "cuda":
        if not torch.cuda.is_available():
            print("[gpu_check] no CUDA device: every GPU stage will fail (try --dry-run)")
        torch.backends.cudnn.benchmark = True  # as trainer=gpu sets it
    chosen = stages()
    if args.stages:
        wanted = {"install", "data", *args.stages.split(",")}
        unknown = wanted - set(chosen)
        if unknown:
            known = ", ".join(chosen)
            parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; known: {known}")
        chosen = {k: v for k, v in chosen.items() if k in wanted}
    records = []
    for name, fn in chosen.items():
        try:
            records.append(run_stage(name, fn, ctx, deadline))
        except OverBudget:  # the timer fired in the instant between a stage's end and disarming
            records.append({"stage": name, "status": "skipped: over budget", "seconds": 0.0})
            records[-1]["budget_s"] = ctx.cfg.budgets.get(name, 0.0)
    if args.previous:
        records = take_previous(json.loads(Path(args.previous).read_text()), records, ctx.results)
    from gpu_report import markdown, summarise

    results = {
        "kind": "gpu-check",
        "dry_run": cfg.dry_run,
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "env": environment(cfg),
        "settings": asdict(cfg),
        "stages": records,
        "seconds": round(time.monotonic() - started, 1),
        **{k: v for k, v in ctx.results.items() if k != "stage_deadline"},
    }
    try:
        summarise(results)
        report = markdown(results)
    except Exception:  # noqa: BLE001 - the measurements must reach the files all the same
        results["report_error"] = traceback.format_exc()
        report = "# GPU check\n\nThe report failed; the JSON beside it has every figure.\n\n"
        report += "```\n" + results["report_error"] + "```\n"
    # Next to each other in docs/ (benchmarks/results-*.json are ignored by git: this one is
    # meant to be committed after a GPU run).
    folder = report_folder(args.out_dir, cfg.dry_run)
    doc, out = folder / "benchmarks-gpu.md", folder / "benchmarks-gpu.json"
    for path, text in ((doc, report), (out, json.dumps(results, indent=2))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if os.environ.get("OUT"):  # the device tool brings back what is under $OUT
        for path in (doc, out):
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(report)
    print(f"[gpu_check] wrote {doc} and {out}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("ok") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
