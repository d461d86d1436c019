"""The measuring stages of benchmarks/gpu_check.py (a to e). Each takes the check's Context,
writes its rows into ctx.results as it goes (a stage stopped over budget keeps them) and returns
a short note or raises. Timing and pairing come from harness.py, the loops from loops.py and the
latent cases from cases.py: nothing here times a training step its own way.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from cases import throughput_case
from harness import REPO, alternate, medians, paired_ratio
from loops import build_model, genlab_loop, plain_loop


class OverBudget(BaseException):
    """Raised when a stage's time is up. A BaseException, so that libraries' `except
    Exception` clauses do not swallow it."""


def time_left(ctx) -> float:
    return ctx.results["stage_deadline"] - time.monotonic()


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# -- a: the CUDA tests -------------------------------------------------------------------------
def cuda_test_files() -> list[str]:
    return sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in p.read_text()
    )


def pytest_counts(output: str) -> dict[str, int]:
    """pytest's closing line as counts: '1 passed, 3 deselected in 2.1s' -> {passed: 1, ...}."""
    lines = [ln for ln in output.strip().splitlines() if re.search(r"\d+ (passed|skipped)", ln)]
    found = re.findall(
        r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1] if lines else ""
    )
    return {("error" if kind.startswith("error") else kind): int(n) for n, kind in found}


def cuda_tests(ctx) -> str:
    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test file carries @pytest.mark.cuda")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", *files]
    try:
        result = subprocess.run(
            cmd, cwd=REPO, env=ctx.env(), capture_output=True, text=True, timeout=time_left(ctx) - 1
        )
    except subprocess.TimeoutExpired as err:
        raise OverBudget from err
    counts = pytest_counts(result.stdout)
    ctx.results["cuda_tests"] = {
        "command": " ".join(cmd[1:]),
        "exit_code": result.returncode,
        "counts": counts,
        "summary": tail(result.stdout, 1),
    }
    if result.returncode != 0:
        raise RuntimeError(f"pytest exit code {result.returncode}:\n{tail(result.stdout)}")
    if ctx.cfg.device == "cuda" and (counts.get("skipped") or not counts.get("passed")):
        raise RuntimeError(f"on a GPU machine the CUDA tests must run: {tail(result.stdout, 1)}")
    return tail(result.stdout, 1)


# -- b: short train.py runs --------------------------------------------------------------------
def train_command(ctx, model: str, precision: str, out: Path) -> list[str]:
    over = ctx.cfg.train_overrides
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"model={model}",
        f"trainer={ctx.cfg.trainer}",
        f"trainer.precision={precision}",
        f"paths.data_dir={ctx.data}",
        f"paths.output_root={out}",
        "data.download=false",
        "data.system_dirs=[]",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=4",
        "++trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "test=false",
        "save_images=false",
        "logger=csv",
        *over.get("*", []),
        *over.get(model, []),
    ]


def check_run(out: Path) -> dict:
    """What a finished run left: its checkpoint and finite metrics, or what is missing."""
    dirs = [d for d in (out / "runs").glob("*/*") if d.is_dir()]
    if len(dirs) != 1:
        return {"problem": f"expected one run dir under {out / 'runs'}, found {len(dirs)}"}
    run = dirs[0]
    info = {"run_dir": str(run.relative_to(out))}
    ckpt = run / "checkpoints" / "last.ckpt"
    info["checkpoint_bytes"] = ckpt.stat().st_size if ckpt.is_file() else 0
    metrics_file = run / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    info["metrics"] = {k: v for k, v in metrics.items() if k in ("val/loss", "train/loss_epoch")}
    bad = [k for k, v in metrics.items() if not (isinstance(v, int | float) and math.isfinite(v))]
    if not info["checkpoint_bytes"]:
        info["problem"] = f"no checkpoint {ckpt.relative_to(out)}"
    elif "val/loss" not in metrics:
        info["problem"] = "metrics.json has no val/loss"
    elif bad:
        info["problem"] = f"metrics not finite: {', '.join(bad)}"
    return info


def train_runs(ctx) -> str:
    """Every (model, precision) of the settings as a real `python train.py` subprocess, a few
    at a time; each must exit 0 and leave a checkpoint and finite metrics."""
    rows = ctx.results.setdefault("train_runs", [])
    pending, live = list(ctx.cfg.train_runs), {}
    try:
        while pending or live:
            while pending and len(live) < ctx.cfg.parallel_runs:
                model, precision = pending.pop(0)
                out = ctx.work / "runs" / f"{model}-{precision}"
                out.mkdir(parents=True)
                log = open(out / "console.log", "w")  # noqa: SIM115 - closed when it ends
                cmd = train_command(ctx, model, precision, out)
                proc = subprocess.Popen(
                    cmd, cwd=REPO, env=ctx.env(), stdout=log, stderr=subprocess.STDOUT
                )
                live[proc] = (model, precision, out, log, time.monotonic())
            for proc in [p for p in live if p.poll() is not None]:
                model, precision, out, log, start = live.pop(proc)
                log.close()
                row = {"model": model, "precision": precision, "exit_code": proc.returncode}
                row["seconds"] = round(time.monotonic() - start, 1)
                row.update(check_run(out) if proc.returncode == 0 else {})
                if proc.returncode != 0:
                    row["problem"] = f"exit code {proc.returncode}"
                if "problem" in row:
                    row["error"] = tail((out / "console.log").read_text())
                rows.append(row)
            time.sleep(0.2)
    finally:
        for proc, (model, precision, *_rest) in live.items():  # over budget: stop them
            proc.kill()
            rows.append({"model": model, "precision": precision, "problem": "over budget"})
    failed = [f"{r['model']} {r['precision']}: {r['problem']}" for r in rows if "problem" in r]
    if failed:
        raise RuntimeError("; ".join(failed))
    return f"{len(rows)} runs: exit 0, checkpoint, finite metrics"


# -- e: FLOPs of one training step -------------------------------------------------------------
def step_flops(kind: str, batch: int, device: str) -> dict:
    """FLOPs of one training step (forward + backward) of the model `kind` at `batch`, and of
    the forward alone, counted by torch's FlopCounterMode (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(kind).to(device).train()
    x = torch.rand(batch, *model.image_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as forward:
        model.compute_terms(x, y)
    with FlopCounterMode(display=False) as step:
        loss, _ = model.compute_terms(x, y)
        loss.backward()
    params = sum(p.numel() for p in model.parameters())
    return {
        "kind": kind,
        "batch_size": batch,
        "parameters": params,
        "flops_per_step": step.get_total_flops(),
        "forward_flops": forward.get_total_flops(),
    }


def flops_key(kind: str, batch: int) -> str:
    return f"{kind}@{batch}"


def flops(ctx) -> str:
    cfg = ctx.cfg
    counts = ctx.results.setdefault("flops", {})
    wanted = [(cfg.unet_kind, cfg.unet_batch)] + [(k, b) for _, k, _, b in cfg.latent_cases]
    for kind, batch in wanted:
        counts[flops_key(kind, batch)] = step_flops(kind, batch, cfg.device)
    unet = counts[flops_key(cfg.unet_kind, cfg.unet_batch)]
    per_image = unet["flops_per_step"] / cfg.unet_batch / 1e9
    return f"{cfg.unet_kind}: {per_image:.2f} GFLOP per image per training step"


# -- c: the U-Net training step and sampling ---------------------------------------------------
UNET_CONFIGS = [
    ("fp32", {"precision": "32-true"}),
    ("bf16", {"precision": "bf16-mixed"}),
    ("bf16 + compile", {"precision": "bf16-mixed", "compile": True}),
    (
        "bf16 + compile + channels_last",
        {"precision": "bf16-mixed", "compile": True, "channels_last": True},
    ),
]


@contextmanager
def compile_backend(backend: str | None):
    """nn.Module.compile with another default backend while inside (the dry run's "eager":
    dynamo traces the same graphs, inductor's minutes of C++ compiling on a CPU are skipped)."""
    if backend is None:
        yield
        return
    original = torch.nn.Module.compile

    def compile_with_backend(self, *args, **kwargs):
        kwargs.setdefault("backend", backend)
        return original(self, *args, **kwargs)

    torch.nn.Module.compile = compile_with_backend
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def unet_training(ctx) -> str:
    """Steps/s of the U-Net training step at each configuration, genlab's Lightning loop and
    the plain loop alternating (harness.alternate), as a paired ratio."""
    cfg = ctx.cfg
    rows = ctx.results.setdefault("unet_training", [])
    kind, data, bs, steps = cfg.unet_kind, cfg.unet_data, cfg.unet_batch, cfg.unet_steps
    configs = [(n, s) for n, s in UNET_CONFIGS if not cfg.unet_configs or n in cfg.unet_configs]
    with compile_backend(cfg.compile_backend):
        for name, spec in configs:
            if spec.get("compile"):
                torch._dynamo.reset()  # fresh guards; inductor's on-disk cache still serves
            runs = alternate(
                {
                    "genlab": lambda s=spec: genlab_loop(kind, data, bs, steps, cfg.device, **s),
                    "plain": lambda s=spec: plain_loop(kind, data, bs, steps, cfg.device, **s),
                },
                cfg.compile_repeats if spec.get("compile") else cfg.repeats,
            )
            images = medians(runs)
            rows.append(
                {
                    "config": name,
                    "kind": kind,
                    "batch_size": bs,
                    "timed_steps": steps,
                    "images_per_s": images,
                    "steps_per_s": {k: v / bs for k, v in images.items()},
                    "runs": runs,
                    "genlab_over_plain": paired_ratio(runs, "genlab", "plain"),
                }
            )
    best = max(rows, key=lambda r: r["steps_per_s"]["genlab"])
    return f"best: {best['config']}, {best['steps_per_s']['genlab']:.1f} steps/s (genlab)"


def unet_sampling(ctx) -> str:
    """DDIM with ddim_steps steps against ancestral sampling over all T steps. Ancestral is
    timed over a schedule of `ancestral_subset` steps and scaled by T / subset: every ancestral
    step is one network call on the same batch plus elementwise math, so its cost per step does
    not depend on T or t."""
    cfg = ctx.cfg
    model = build_model(cfg.unet_kind).to(cfg.device).eval()
    full = model.schedule
    T, k, bs = full.timesteps, cfg.ancestral_subset, cfg.sample_batch

    def seconds(steps: int, sampler: str) -> float:
        g = torch.Generator(device=cfg.device).manual_seed(0)
        sync(cfg.device)
        start = time.perf_counter()
        model.sample(bs, generator=g, steps=steps, sampler=sampler)
        sync(cfg.device)
        return time.perf_counter() - start

    seconds(min(5, T), "ddim")  # warm-up: cuDNN's algorithm search, the allocator
    ddim = [seconds(cfg.ddim_steps, "ddim") for _ in range(cfg.repeats)]
    model.schedule = type(full).from_name("linear", k)
    try:
        ancestral = [seconds(k, "ddpm") for _ in range(cfg.repeats)]
    finally:
        model.schedule = full
    ddim_s, subset_s = medians({"d": ddim, "a": ancestral}).values()
    estimate = subset_s * T / k
    ctx.results["unet_sampling"] = {
        "kind": cfg.unet_kind,
        "batch_size": bs,
        "timesteps": T,
        "ddim_steps": cfg.ddim_steps,
        "ddim_seconds": ddim_s,
        "ancestral_subset_steps": k,
        "ancestral_subset_seconds": subset_s,
        "ancestral_seconds_extrapolated": estimate,
        "ddim_speedup": estimate / ddim_s,
        "runs": {"ddim": ddim, "ancestral_subset": ancestral},
    }
    return f"DDIM-{cfg.ddim_steps} {estimate / ddim_s:.1f}x faster (ancestral from {k} of {T})"


# -- d: the latent models with the data on the device ------------------------------------------
def latent_throughput(ctx) -> str:
    cfg = ctx.cfg
    rows = ctx.results.setdefault("latent_throughput", [])
    for name, kind, data, bs in cfg.latent_cases:
        row = throughput_case(
            name, kind, data, bs, cfg.latent_steps, cfg.latent_repeats, cfg.device, False
        )
        rows.append({"kind": kind, **row})
    return ", ".join(f"{r['case']} {r['ratio_to_floor']:.2f} of the floor" for r in rows)
