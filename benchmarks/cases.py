"""The benchmark cases. The first half measures (each function returns result rows); the second
half is one small function per command-line case (`CASES`), which picks the sizes and devices
that case runs at and says which results section each row goes to.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from harness import REPO, WARMUP, Plan, alternate, medians, paired_ratio, timed_fit
from loops import build_model, fashion_root, genlab_loop, plain_loop, seed_loop


# -- training throughput -----------------------------------------------------------------------
def throughput_case(name, kind, data, batch_size, steps, repeats, device, with_seed=True):
    runners = {
        "genlab": lambda: genlab_loop(kind, data, batch_size, steps, device),
        "plain_tensor_loop": lambda: plain_loop(kind, data, batch_size, steps, device),
    }
    if with_seed:
        runners["seed001_loop"] = lambda: seed_loop(kind, data, batch_size, steps, device)
    runs = alternate(runners, repeats)
    row = {
        "case": name,
        "batch_size": batch_size,
        "images_per_s": medians(runs),
        "runs": runs,
        "ratio_to_floor": paired_ratio(runs, "genlab", "plain_tensor_loop"),
    }
    if with_seed:
        row["ratio_to_seed001"] = paired_ratio(runs, "genlab", "seed001_loop")
        row["floor_over_seed001"] = paired_ratio(runs, "plain_tensor_loop", "seed001_loop")
    return row


SWITCHES = {
    "off": {},
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "bf16-mixed + channels_last": {"precision": "bf16-mixed", "channels_last": True},
}


def switches_case(kind, data, batch_size, steps, repeats, device, switches=tuple(SWITCHES)):
    """genlab's training step with each `speed:` switch (and bf16 autocast) on, against off."""
    runners = {
        name: (
            lambda spec=SWITCHES[name]: genlab_loop(kind, data, batch_size, steps, device, **spec)
        )
        for name in ("off", *(s for s in switches if s != "off"))
    }
    runs = alternate(runners, repeats)
    return {
        "case": f"{kind} switches",
        "batch_size": batch_size,
        "images_per_s": medians(runs),
        "runs": runs,
        "ratio_to_off": {k: paired_ratio(runs, k, "off") for k in runs if k != "off"},
    }


def optimizer_case(kind, data, batch_size, steps, repeats, device):
    """The plain loop with the fused Adam kernel (genlab's default) against torch's default."""
    runs = alternate(
        {
            "fused": lambda: plain_loop(kind, data, batch_size, steps, device, fused=True),
            "default": lambda: plain_loop(kind, data, batch_size, steps, device, fused=None),
        },
        repeats,
    )
    return {
        "case": f"optimizer {kind}",
        "batch_size": batch_size,
        "images_per_s": medians(runs),
        "runs": runs,
        "fused_over_default": paired_ratio(runs, "fused", "default"),
    }


def overhead_case(steps, repeats, device):
    """Lightning's fixed cost per training step: a one-parameter model, so nothing but the loop
    machinery (hooks, closure, progress tracking) is timed, against the same plain loop."""
    import lightning.pytorch as pl

    class OneParameter(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device=device))

        def training_step(self, batch, batch_idx):
            return (self.w * batch).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Batches:
        def __init__(self, n):
            self.n, self.x = n, torch.ones(1, device=device)

        def __len__(self):
            return self.n

        def __iter__(self):
            return (self.x for _ in range(self.n))

    def lightning_ms():
        batches = Batches(WARMUP + steps)
        return timed_fit(OneParameter(), device, steps, train_dataloaders=batches) / steps * 1e3

    def plain_ms():
        model = OneParameter()
        optimizer = model.configure_optimizers()
        for i, x in enumerate(Batches(WARMUP + steps)):
            if i == WARMUP:
                start = time.perf_counter()
            loss = model.training_step(x, i)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps * 1e3

    runs = alternate({"lightning": lightning_ms, "plain": plain_ms}, repeats)
    med = medians(runs)
    return {
        "case": "Lightning fixed cost per step",
        "ms_per_step": med,
        "runs": runs,
        "overhead_ms": statistics.median(
            a - b for a, b in zip(runs["lightning"], runs["plain"], strict=True)
        ),
    }


# -- sampling ----------------------------------------------------------------------------------
def sampling_case(batch, timesteps, repeats, device, kind="ddpm_small"):
    model = build_model(kind).to(device).eval()
    model.schedule = type(model.schedule).from_name("linear", timesteps)

    def rate(steps, sampler):
        g = torch.Generator(device=device).manual_seed(0)
        start = time.perf_counter()
        model.sample(batch, generator=g, steps=steps, sampler=sampler)
        if device == "cuda":
            torch.cuda.synchronize()
        return batch / (time.perf_counter() - start)

    runs = alternate(
        {
            "ddpm_T": lambda: rate(timesteps, "ddpm"),
            "ddim_100": lambda: rate(min(100, timesteps), "ddim"),
            "ddim_50": lambda: rate(min(50, timesteps), "ddim"),
        },
        repeats,
    )
    med = medians(runs)
    return {
        "case": f"sampling {kind} T={timesteps}",
        "batch_size": batch,
        "images_per_s": med,
        "runs": runs,
        "ddim50_over_ddpm": med["ddim_50"] / med["ddpm_T"],
        "ddim100_over_ddpm": med["ddim_100"] / med["ddpm_T"],
    }


# -- start-up and memory -----------------------------------------------------------------------
def startup_case(repeats):
    """Seconds from process start to the composed config printed (`--cfg job`), and to the first
    training step of the default `python train.py` (data, model, loggers, Trainer set up)."""
    config_times, first_step_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--cfg", "job"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        config_times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as out:
            stamp = Path(out) / "first_step"
            env = {
                **os.environ,
                "GENLAB_FIRST_STEP_FILE": str(stamp),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")) if p
                ),
            }
            start = time.time()
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "train.py"),
                    f"paths.output_root={out}",
                    f"paths.data_dir={fashion_root()}",
                    "trainer.max_steps=1",
                    "trainer.enable_progress_bar=false",
                    "test=false",
                    "save_images=false",
                    "+callbacks.first_step._target_=first_step.FirstStepClock",
                ],
                check=True,
                capture_output=True,
                cwd=REPO,
                env=env,
            )
            first_step_times.append(float(stamp.read_text()) - start)
    return [
        {
            "case": "startup: train.py --cfg job",
            "seconds": statistics.median(config_times),
            "runs": config_times,
        },
        {
            "case": "startup: python train.py to its first training step",
            "seconds": statistics.median(first_step_times),
            "runs": first_step_times,
        },
    ]


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a running process. (getrusage's maxrss would also count the parent's pages
    that the child held between fork and exec, which here dwarf a small child.)"""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def default_run_memory(max_steps):
    """Peak RSS of the default `python train.py` (shortened to max_steps) in a child process."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        child = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                f"paths.output_root={out}",
                f"paths.data_dir={fashion_root()}",
                f"trainer.max_steps={max_steps}",
                "trainer.enable_progress_bar=false",
                "test=false",
                "save_images=false",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _peak_rss_mb(child.pid))
            time.sleep(0.1)
        if child.returncode != 0:
            raise RuntimeError(f"python train.py failed with exit code {child.returncode}")
        seconds = time.perf_counter() - start
    return {
        "case": f"default python train.py ({max_steps} steps)",
        "peak_rss_mb": peak,
        "seconds": seconds,
    }


# -- the command-line cases --------------------------------------------------------------------
# Each takes the Plan and returns (results section, row) pairs; run.py runs them in CASES order.
Rows = list[tuple[str, dict]]


def _mlp_throughput(kind: str, p: Plan) -> Rows:
    """MLP on Fashion-MNIST at a small and a large batch: genlab vs the floor vs seed 001."""
    return [
        (
            "throughput",
            throughput_case(
                f"{kind} MLP fashion_mnist", kind, "fashion_mnist", bs, p.steps, p.repeats, p.device
            ),
        )
        for bs in (32, 128 if p.quick else 256)
    ]


def vae(p: Plan) -> Rows:
    return _mlp_throughput("vae", p)


def ae(p: Plan) -> Rows:
    return _mlp_throughput("ae", p)


def conv_vae(p: Plan) -> Rows:
    row = throughput_case(
        "conv VAE cifar10-shaped", "conv_vae", "cifar10", 128, p.steps, p.repeats, p.device, False
    )
    return [("throughput", row)]


def ddpm_runs(p: Plan) -> list[tuple[str, str, int, int]]:
    """(model, data, batch, steps) of the two DDPM sizes. On a CPU the paper-size U-Net (35.7M
    parameters, ~12 GFLOP per image) takes seconds per image: a tiny batch and a few steps keep
    its cases to minutes."""
    runs = [("ddpm_small", "fashion_mnist", 128 if p.on_gpu else 32, max(2, p.steps // 10))]
    runs.append(
        ("ddpm_paper", "cifar10", 128 if p.on_gpu else 2, max(2, p.steps // 10) if p.on_gpu else 3)
    )
    if p.quick:
        runs = [(k, d, 2, 2) for k, d, _, _ in runs]
    return runs


def ddpm(p: Plan) -> Rows:
    return [
        ("throughput", throughput_case(f"{k} train step", k, d, bs, n, p.repeats, p.device, False))
        for k, d, bs, n in ddpm_runs(p)
    ]


def switches(p: Plan) -> Rows:
    # compile on a CPU needs minutes of compiling per new shape; the paper-size U-Net's
    # switches are measured where they matter, on a GPU.
    names = ("off", "channels_last", "bf16-mixed") if p.quick else tuple(SWITCHES)
    return [
        ("switches", switches_case(kind, data, bs, n, p.repeats, p.device, names))
        for kind, data, bs, n in ddpm_runs(p)[: 2 if p.on_gpu else 1]
    ]


def speedrun(p: Plan) -> Rows:
    """The speedrun preset's U-Net at its batch (128), each CPU switch against none: why the
    preset trains in bf16-mixed and without channels_last."""
    names = ("off", "channels_last", "bf16-mixed", "bf16-mixed + channels_last")
    batch, steps = (8, 2) if p.quick else (128, p.steps)
    row = switches_case("ddpm_cpu", "fashion_mnist", batch, steps, p.repeats, p.device, names)
    return [("switches", row)]


def optimizer(p: Plan) -> Rows:
    bs = 32 if p.quick else 256
    return [
        ("optimizer", optimizer_case(kind, "fashion_mnist", bs, p.steps, p.repeats, p.device))
        for kind in ("vae", "ae")
    ]


def sampling(p: Plan) -> Rows:
    batch = 256 if p.on_gpu else 4
    timesteps = 50 if p.quick else 1000
    rows = [("sampling", sampling_case(batch, timesteps, p.repeats if p.on_gpu else 1, p.device))]
    if p.on_gpu and not p.quick:  # DDIM vs DDPM at the paper's CIFAR-10 U-Net size
        rows.append(("sampling", sampling_case(batch, timesteps, 1, p.device, kind="ddpm_paper")))
    return rows


def startup(p: Plan) -> Rows:
    return [("other", row) for row in startup_case(p.repeats)]


def overhead(p: Plan) -> Rows:
    return [("other", overhead_case(100 if p.quick else 2000, p.repeats, p.device))]


def memory(p: Plan) -> Rows:
    return [("other", default_run_memory(20 if p.quick else 200))]


# The order here is the order cases run in and rows appear, whatever order --cases names them.
CASES: dict[str, Callable[[Plan], Rows]] = {
    "vae": vae,
    "ae": ae,
    "conv_vae": conv_vae,
    "ddpm": ddpm,
    "switches": switches,
    "speedrun": speedrun,
    "optimizer": optimizer,
    "sampling": sampling,
    "startup": startup,
    "overhead": overhead,
    "memory": memory,
}
