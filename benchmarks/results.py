"""docs/results.md, made by one command: every model on Fashion-MNIST at a stated budget.

    python benchmarks/results.py                  # the whole table: ~2 hours on 2 CPU cores
    python benchmarks/results.py --quick --out-dir /tmp/q   # tiny budgets: checks the script
    python benchmarks/results.py --report-only    # rewrite the page from what is recorded

Every number comes from a real `python train.py ...` or `python benchmarks/sample_quality.py
...` process whose exact command the page prints beside it. The work is a list of steps (train
a model, evaluate its checkpoint, score a sampler); each finished step leaves a record,
<out dir>/records/<step>.json (its command, wall seconds, metrics), and is skipped when the
script runs again, so an interrupted run resumes where it stopped: a training that was stopped
continues from its last checkpoint (`ckpt_path=`), any other step is redone in a fresh dir (the
unfinished one is kept aside as <dir>.unfinished-N, never deleted). The page is written from the
records alone after each step, so it always shows what has been measured so far; the records
go beside it as docs/results.json.

Rows: the default VAE, a VAE trained with the IWAE bound (K = 5), the CVAE, seed 001's AE and the
VQ-VAE (reconstruction only), a latent DDPM on each of those two, and the CPU DDPM preset; for
each: test NLL in nats with K = 5000 importance samples (VAE family), the DDPM's bound in
bits/dim, domain FID/KID on 10,000 samples with the domain classifier's accuracy, training and
evaluation wall time on this machine. Then domain FID against network calls for the DDPM's
samplers on that one trained model, and seed 002's beta x k grid with its trends checked.
--quick runs the same steps with budgets of a few batches (what tests/test_results.py runs);
its page goes to <out dir>/results.md, never to docs/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_report import markdown, speedrun_figure  # noqa: E402


@dataclass(frozen=True)
class Model:
    """One row of the model table: how it trains and which evaluations apply to it."""

    key: str
    title: str
    train: tuple[str, ...]
    generative: bool = True
    nll: bool = False  # VAE family: the importance-sampled test NLL
    diffusion: bool = False  # DDPM: bits/dim bound, samples cost sample_steps calls
    autoencoder: str | None = None  # a latent DDPM: the row whose run it diffuses in


MODELS = (
    Model("vae", "VAE (the default `python train.py`)", (), nll=True),
    Model(
        "vae_iwae5", "VAE trained with the IWAE bound, K = 5", ("model.iwae_k_train=5",), nll=True
    ),
    Model("cvae", "CVAE (label dropout, guidance 1)", ("model=cvae",), nll=True),
    Model("ae", "AE (seed 001)", ("model=ae",), generative=False),
    Model(
        "latent_ddpm_ae", "latent DDPM on the AE's codes", ("model=latent_ddpm",), autoencoder="ae"
    ),
    Model("vqvae", "VQ-VAE", ("model=vqvae",), generative=False),
    Model(
        "latent_ddpm_vqvae",
        "latent DDPM on the VQ-VAE's code grids",
        ("model=latent_ddpm",),
        autoencoder="vqvae",
    ),
    Model(
        "ddpm",
        "DDPM (`experiment=ddpm_fashion_cpu`)",
        ("experiment=ddpm_fashion_cpu",),
        diffusion=True,
    ),
)


@dataclass(frozen=True)
class Race:
    """One preset of the speedrun section (the goal: domain FID <= 10 on 10,000 samples after <= 15
    minutes of training on 2 CPU cores, <= 20 network calls per image)."""

    key: str
    title: str
    train: tuple[str, ...]
    max_steps: int  # the last curve point (a run stopped by trainer.max_time ends sooner)


RACES = (
    Race(
        "speedrun",
        "`experiment=ddpm_fashion_speedrun`",
        ("experiment=ddpm_fashion_speedrun",),
        max_steps=0,  # read from the preset (conf/experiment/ddpm_fashion_speedrun.yaml)
    ),
    # The current preset on the same clock: its trajectory is the full run's (a constant rate
    # after the warm-up), cut where the speedrun's training budget ends.
    Race(
        "cpu15",
        "`experiment=ddpm_fashion_cpu`, its first 15 minutes",
        ("experiment=ddpm_fashion_cpu", "+trainer.max_time=00:00:15:00"),
        max_steps=4000,
    ),
)


def preset_value(name: str, group: str, key: str):
    """A key of one of genlab's own presets (a file of this repository), e.g. trainer.max_steps."""
    import yaml

    preset = yaml.safe_load((REPO / "conf" / "experiment" / f"{name}.yaml").read_text())
    return preset[group][key]


def preset_max_steps(name: str) -> int:
    return int(preset_value(name, "trainer", "max_steps"))


# Every race is scored with the speedrun's own sampler and step count (at most 20 network
# calls), so the curves differ only by the training.
RACE_SAMPLER = (
    preset_value("ddpm_fashion_speedrun", "model", "sampler"),
    int(preset_value("ddpm_fashion_speedrun", "model", "sample_steps")),
)


def race_steps(budget: Budget, out: Path, data_dir: str | None) -> list[Step]:
    """Each race: a training that keeps a checkpoint every `race_every` steps, each checkpoint
    scored (its minutes: the checkpoint's mtime after the training's start), the last one on
    the full sample count."""
    where = [f"paths.data_dir={data_dir}"] if data_dir else []
    steps = []
    for race in RACES:
        run = out / f"race-{race.key}"
        last = race.max_steps or preset_max_steps("ddpm_fashion_speedrun")
        for arg in budget.speedrun_train:  # a smaller budget's own step count
            if arg.startswith("trainer.max_steps="):
                last = int(arg.split("=")[1])
        curve = (
            "+callbacks.race_curve={_target_: lightning.pytorch.callbacks.ModelCheckpoint, "
            f'dirpath: {run / "curve"}, filename: "curve-{{step}}", '
            f"every_n_train_steps: {budget.race_every}, save_top_k: -1, monitor: null}}"
        )
        train = [*race.train, *budget.speedrun_train, *where, "test=false", curve]
        steps.append(
            Step(
                f"race-{race.key}.train",
                ["train.py", *train, f"hydra.run.dir={run}"],
                run,
                "train",
                f"race-{race.key}",
                resumable=True,
            )
        )
        sampler, calls = RACE_SAMPLER
        for at in range(budget.race_every, last + 1, budget.race_every):
            checkpoint = run / "curve" / f"curve-step={at}.ckpt"
            meta = {"race": race.key, "step": at, "checkpoint": str(checkpoint)}
            steps.append(
                quality_step(
                    f"race-{race.key}-{at}",
                    checkpoint,
                    budget.race_curve_samples,
                    data_dir,
                    sampler,
                    calls,
                    meta=meta,
                    optional=True,
                )
            )
        # The weights the training ended with (their EMA), not the best by validation loss:
        # what a user of the preset gets at the end of the budget.
        final = {"race": race.key, "final": True}
        steps.append(
            quality_step(
                f"race-{race.key}-final",
                run / "checkpoints" / "last.ckpt",
                budget.race_samples,
                data_dir,
                sampler,
                calls,
                meta=final,
            )
        )
    return steps


# Seed 002's grid (conf/sweep/vae_beta_k_fashion.yaml's settings, one run per point).
GRID_SETTINGS = ("model.reduction=mean", "data.batch_size=128", "trainer.max_epochs=5")


@dataclass(frozen=True)
class Budget:
    """The sizes of one mode. `full` is what docs/results.md states; `quick` checks the script."""

    name: str
    train: tuple[str, ...]  # added to every training command
    ddpm_train: tuple[str, ...]  # added to the DDPM's (a step budget)
    grid_train: tuple[str, ...]
    samples: int  # generated images for FID/KID/IS
    kid_subset: int
    nll_k: int  # importance samples per test image
    nll_batches: int  # test batches of nll_batch_size images scored with nll_k
    nll_batch_size: int
    bound_images: int  # DDPM test images scored with the full bound
    curve_samples: int
    curve_steps: tuple[int, ...]
    curve_full_ancestral: bool  # the 1,000-call ancestral sampler as well
    grid_samples: int
    grid_betas: tuple[str, ...] = ("2.5e-6", "2.5e-2", "1")
    grid_ks: tuple[int, ...] = (3, 16)
    diffusion_eval: tuple[str, ...] = field(default=())  # added to a diffusion model's evaluation
    # The speedrun section: each preset of RACES trained once (speedrun_train added), a
    # checkpoint every `race_every` steps scored on `race_curve_samples`, the last on
    # `race_samples` images, all with the speedrun's sampler.
    speedrun_train: tuple[str, ...] = ()
    race_every: int = 500
    race_curve_samples: int = 1000
    race_samples: int = 10000


FULL = Budget(
    name="full",
    train=(),
    ddpm_train=(),
    grid_train=(),
    samples=10000,
    kid_subset=1000,
    nll_k=5000,
    nll_batches=1,
    nll_batch_size=500,
    bound_images=128,
    curve_samples=500,
    curve_steps=(10, 20, 50, 100),
    # Ho et al.'s sampler over all 1,000 steps: ~20 min for 500 samples on 2 cores; off in the
    # table (--full-ancestral adds it), the strided ancestral sampler stands for it.
    curve_full_ancestral=False,
    grid_samples=1000,
)
# One epoch of two training batches: every quick training, the grid's runs among them.
FEW_BATCHES = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
)
QUICK = Budget(
    name="quick",
    train=FEW_BATCHES,
    ddpm_train=("trainer.max_steps=2", "trainer.limit_val_batches=1", "model.warmup_steps=1"),
    grid_train=FEW_BATCHES,
    samples=60,
    kid_subset=20,
    nll_k=8,
    nll_batches=1,
    nll_batch_size=16,
    bound_images=2,
    curve_samples=40,
    curve_steps=(2,),
    curve_full_ancestral=False,
    grid_samples=40,
    grid_betas=("2.5e-6", "1"),
    diffusion_eval=("model.sample_steps=4",),
    speedrun_train=(
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "model.warmup_steps=1",
    ),
    race_every=1,
    race_curve_samples=40,
    race_samples=60,
)


@dataclass
class Step:
    """One process to run: its record key, its command (relative to the repo) and its run dir."""

    key: str
    argv: list[str]
    run_dir: Path | None  # None: the command writes no run dir (sample_quality.py)
    kind: str  # train | eval | quality
    model: str
    resumable: bool = False  # a training: continue from its last checkpoint
    optional: bool = False  # a curve point: skipped when its checkpoint was never written
    meta: dict = field(default_factory=dict)


def plan(budget: Budget, out: Path, data_dir: str | None) -> list[Step]:
    """Every step of a mode, in the order they run (an autoencoder before its latent DDPM)."""
    where = [f"paths.data_dir={data_dir}"] if data_dir else []
    steps: list[Step] = []

    def run_dir(name: str) -> Path:
        return out / name

    for m in MODELS:
        train = list(m.train) + list(budget.ddpm_train if m.diffusion else budget.train)
        if m.autoencoder:
            train.append(f"model.autoencoder={run_dir(m.autoencoder)}")
        train += where
        steps.append(
            Step(
                f"{m.key}.train",
                ["train.py", *train, "test=false", f"hydra.run.dir={run_dir(m.key)}"],
                run_dir(m.key),
                "train",
                m.key,
                resumable=True,
            )
        )
        evaluate = [*train, f"evaluate={run_dir(m.key)}"]
        if m.diffusion or m.autoencoder:
            evaluate += budget.diffusion_eval
        if m.generative:
            evaluate += [
                f"eval.num_samples={budget.samples}",
                f"eval.kid_subset_size={budget.kid_subset}",
            ]
        if m.diffusion:
            evaluate.append(f"eval.bound_images={budget.bound_images}")
        steps.append(
            Step(
                f"{m.key}.eval",
                ["train.py", *evaluate, f"hydra.run.dir={run_dir(m.key + '-eval')}"],
                run_dir(m.key + "-eval"),
                "eval",
                m.key,
            )
        )
        if m.nll:
            nll = [
                *train,
                f"evaluate={run_dir(m.key)}",
                f"eval.iwae_k={budget.nll_k}",
                "eval.sample_quality=false",
                f"data.eval_batch_size={budget.nll_batch_size}",
                f"trainer.limit_test_batches={budget.nll_batches}",
                f"hydra.run.dir={run_dir(m.key + '-nll')}",
            ]
            steps.append(
                Step(
                    f"{m.key}.nll",
                    ["train.py", *nll],
                    run_dir(m.key + "-nll"),
                    "eval",
                    m.key,
                    meta={"images": budget.nll_batches * budget.nll_batch_size, "k": budget.nll_k},
                )
            )
    for beta in budget.grid_betas:
        for k in budget.grid_ks:
            name = f"grid-beta{beta}-k{k}"  # a dir name Hydra's override grammar accepts
            # The test stage (recon, KL, a K = 100 NLL) runs inside the training, as the
            # sweep's jobs do; the samples are scored by the classifier afterwards.
            train = [
                f"model.beta={beta}",
                f"model.latent_dim={k}",
                *GRID_SETTINGS,
                *budget.grid_train,
                "model.iwae_k_test=100",
                "eval.sample_quality=false",
                *where,
            ]
            meta = {"beta": float(beta), "k": k}
            steps.append(
                Step(
                    f"{name}.train",
                    ["train.py", *train, f"hydra.run.dir={run_dir(name)}"],
                    run_dir(name),
                    "train",
                    name,
                    resumable=True,
                    meta=meta,
                )
            )
            steps.append(
                quality_step(name, run_dir(name), budget.grid_samples, data_dir, meta=meta)
            )
    # Then the most expensive part (every sampler on the DDPM row's model), then the speedrun.
    return (
        steps + sampler_curve(budget, run_dir("ddpm"), data_dir) + race_steps(budget, out, data_dir)
    )


def quality_step(
    key, run, samples, data_dir, sampler=None, steps=None, eta=None, meta=None, optional=False
) -> Step:
    argv = ["benchmarks/sample_quality.py", str(run), "--num-samples", str(samples)]
    if sampler:
        argv += ["--sampler", sampler]
    if steps:
        argv += ["--steps", str(steps)]
    if eta is not None:
        argv += ["--eta", str(eta)]
    if data_dir:
        argv += ["--data-dir", data_dir]
    return Step(
        f"{key}.quality", argv, None, "quality", key, meta=dict(meta or {}), optional=optional
    )


# The sampler curve's columns: (label, sampler, eta, title).
CURVE_SAMPLERS = (
    ("ddim", "ddim", None, "DDIM (eta 0)"),
    ("dpmpp_2m", "dpmpp_2m", None, "DPM-Solver++(2M)"),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", None, "SDE-DPM-Solver++(2M)"),
    ("ancestral_strided", "ddim", 1.0, "ancestral on the strided chain (DDIM eta 1)"),
)


def sampler_curve(budget: Budget, ddpm_run: Path, data_dir) -> list[Step]:
    """Domain FID against network calls, every sampler on the same trained DDPM."""
    out = []
    for steps in budget.curve_steps:
        for label, sampler, eta, _ in CURVE_SAMPLERS:
            key = f"curve-{label}-{steps}"
            meta = {"sampler": label, "calls": steps}
            out.append(
                quality_step(
                    key, ddpm_run, budget.curve_samples, data_dir, sampler, steps, eta, meta
                )
            )
    if budget.curve_full_ancestral:
        key = "curve-ancestral-1000"
        meta = {"sampler": "ancestral", "calls": 1000}
        out.append(
            quality_step(key, ddpm_run, budget.curve_samples, data_dir, "ddpm", 1000, None, meta)
        )
    return out


def shown(step: Step) -> str:
    """The command as a user types it from the repo root."""
    return "python " + shlex.join(step.argv)


def set_aside(folder: Path) -> None:
    """Keep an unfinished run dir under a new name (never delete what a run wrote)."""
    n = 1
    while folder.with_name(f"{folder.name}.unfinished-{n}").exists():
        n += 1
    folder.rename(folder.with_name(f"{folder.name}.unfinished-{n}"))


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(partial, path)


def run_step(step: Step, out: Path, env: dict) -> dict:
    """Run one step (resuming or redoing an unfinished one) and return its record."""
    argv, resumed = list(step.argv), False
    run_dir = None if step.run_dir is None else REPO / step.run_dir
    if run_dir is not None and run_dir.exists():
        last = run_dir / "checkpoints" / "last.ckpt"
        if step.resumable and last.is_file():
            argv.insert(-1, f"ckpt_path={step.run_dir / 'checkpoints' / 'last.ckpt'}")
            resumed = True
        else:
            set_aside(run_dir)
    log_path = out / "logs" / f"{step.key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[results] {step.key}: {'resuming ' if resumed else ''}{shown(step)}", flush=True)
    started_at, started = time.time(), time.monotonic()
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, stdout=log, stderr=log)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(
            f"[results] {step.key} failed (exit {done.returncode}); its output: {log_path}\n"
            f"{tail}\nRun the same command again to resume from here."
        )
    record = {
        "key": step.key,
        "kind": step.kind,
        "model": step.model,
        "command": shown(step),  # as planned; a resume added ckpt_path=
        "seconds": round(seconds, 1),
        "resumed": resumed,
        "meta": step.meta,
        "started_at": round(started_at, 1),  # unix time: the race curve's clock starts here
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "metrics": collect_metrics(step, log_path),
    }
    if "checkpoint" in step.meta:  # a race point: when its checkpoint was written
        record["checkpoint_mtime"] = round((REPO / step.meta["checkpoint"]).stat().st_mtime, 1)
    return record


def collect_metrics(step: Step, log_path: Path) -> dict:
    """A run dir's metrics.json, or sample_quality.py's JSON line (the last line it printed)."""
    if step.run_dir is not None:
        return read_json(REPO / step.run_dir / "metrics.json") or {}
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def environment() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="budgets of a few batches")
    parser.add_argument("--out-dir", type=Path, default=None, help="run dirs and records")
    parser.add_argument("--doc", type=Path, default=None, help="the page to write")
    parser.add_argument("--data-dir", default=None, help="paths.data_dir for every run")
    parser.add_argument("--only", nargs="*", default=None, help="steps whose key starts so")
    parser.add_argument("--report-only", action="store_true", help="write the page, run nothing")
    parser.add_argument(
        "--full-ancestral", action="store_true", help="the curve's 1,000-step ancestral point too"
    )
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.full_ancestral:
        budget = dataclasses.replace(budget, curve_full_ancestral=True)
    out = (args.out_dir or REPO / "outputs" / "results" / budget.name).resolve()
    if args.quick and args.out_dir is None:
        parser.error("--quick needs --out-dir (its tiny runs never go next to the real ones)")
    doc = args.doc or (out / "results.md" if args.quick else REPO / "docs" / "results.md")
    records_dir = out / "records"
    steps = plan(budget, _relative(out), args.data_dir)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    if not records_dir.exists():  # a fresh out dir starts from what the page already shows
        for key, record in published_records(doc, budget).items():
            write_json(records_dir / f"{key}.json", record)
    if not args.report_only:
        for step in steps:
            if args.only is not None and not any(step.key.startswith(p) for p in args.only):
                continue
            if (records_dir / f"{step.key}.json").is_file():
                print(f"[results] {step.key}: recorded, skipped", flush=True)
                continue
            if step.optional and not (REPO / step.meta["checkpoint"]).is_file():
                print(f"[results] {step.key}: no checkpoint (run stopped sooner), skipped")
                continue
            write_json(records_dir / f"{step.key}.json", run_step(step, out, env))
            write_page(doc, budget, steps, records_dir)
    write_page(doc, budget, steps, records_dir)
    print(f"[results] wrote {doc}", flush=True)
    return 0


def _relative(path: Path) -> Path:
    """Paths under the repo are shown relative to it, as a user would type them."""
    try:
        return path.relative_to(REPO)
    except ValueError:
        return path


def published_records(doc: Path, budget: Budget) -> dict:
    """The records the page was last written from (<page>.json, same budget), so that steps
    measured on another machine or day keep their rows when a fresh out dir runs others."""
    page = read_json(doc.with_suffix(".json"))
    return page["records"] if page and page.get("budget") == budget.name else {}


def write_page(doc: Path, budget: Budget, steps: list[Step], records_dir: Path) -> None:
    """The page, and beside it (as <page>.json) every record it was written from: the run dirs
    stay under outputs/, the numbers and commands travel with the page."""
    records = {s.key: read_json(records_dir / f"{s.key}.json") for s in steps}
    env = environment()
    doc.parent.mkdir(parents=True, exist_ok=True)
    partial = doc.with_name(doc.name + ".partial")
    partial.write_text(markdown(budget, steps, records, env))
    os.replace(partial, doc)
    speedrun_figure(steps, records, doc.with_name(doc.stem + "-speedrun.png"))
    done = {key: record for key, record in records.items() if record}
    write_json(doc.with_suffix(".json"), {"budget": budget.name, "env": env, "records": done})


if __name__ == "__main__":
    raise SystemExit(main())
