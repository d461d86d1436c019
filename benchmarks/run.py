"""genlab's speed, measured side by side with the plain PyTorch loops people would write.

    python benchmarks/run.py                       # every case (about 30 min on 2 CPU cores)
    python benchmarks/run.py --cases vae ae --steps 100 --repeats 5
    python benchmarks/run.py --quick               # tiny settings (what the test runs)

Cases: vae, ae (MLP, Fashion-MNIST, batch 32 and 256: genlab vs a plain loop over one tensor
vs seed 001's DataLoader loop), conv_vae (CIFAR-10 shaped), ddpm (small and paper-size U-Net
training step vs a plain loop), switches (speed.compile, speed.channels_last, bf16-mixed, each
on vs off), optimizer (fused vs default Adam), sampling (DDPM T steps vs DDIM 100/50), startup
(`--cfg job`, and to the first training step), overhead (Lightning's fixed cost per step),
memory (peak RSS of the default run).

Every case runs its loops in this one process, alternating (a, b, c, a, b, c, ...) after a
warm-up; a ratio is the median over repeats of the ratio of runs made back to back. Results go
to benchmarks/results-<device>.json and a Markdown report, docs/benchmarks.md on a CPU and
docs/benchmarks-gpu.md on a GPU, whose first table checks issue 7's targets. Shared machines
swing by 2x between runs: only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WARMUP = 5  # untimed steps before every timed run


# -- data --------------------------------------------------------------------------------------
def fashion_root() -> str:
    """A data dir with Fashion-MNIST: the user's, else Debian's package staged into a temp dir."""
    return os.environ.get("GENLAB_DATA_DIR", str(Path(tempfile.gettempdir()) / "genlab-bench"))


def cifar_like_root() -> str:
    """CIFAR-10 cannot be downloaded here: 50k random images in the genuine pickled layout."""
    import numpy as np

    from genlab.data.formats import write_cifar10

    root = Path(tempfile.gettempdir()) / "genlab-bench-cifar"
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        rng = np.random.default_rng(0)
        train = (
            rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 50000),
        )
        test = (
            rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 10000),
        )
        write_cifar10(root, train, test)
    return str(root)


def datamodule(name: str, batch_size: int):
    from genlab.data import ImageDataModule

    root = cifar_like_root() if name == "cifar10" else fashion_root()
    dm = ImageDataModule.from_name(name, root, batch_size=batch_size, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- the three training loops ------------------------------------------------------------------
def build_model(kind: str):
    from genlab.models import AE, DDPM, VAE

    if kind == "vae":
        return VAE(image_shape=[1, 28, 28], latent_dim=16)
    if kind == "ae":
        return AE(image_shape=[1, 28, 28], latent_dim=9, mlp={"hidden": [128, 64, 36, 18]})
    if kind == "conv_vae":
        return VAE(image_shape=[3, 32, 32], latent_dim=64, arch="conv", likelihood="gaussian")
    if kind == "ddpm_small":
        return DDPM(image_shape=[1, 28, 28], ema_decay=None, warmup_steps=1)
    if kind == "ddpm_paper":
        from genlab.nets.unet import PRESETS

        # Ho et al.'s CIFAR-10 U-Net; the DDPM takes channels and image size from image_shape.
        derived = ("in_channels", "image_size")
        unet = {k: v for k, v in PRESETS["ddpm_cifar10"].items() if k not in derived}
        return DDPM(image_shape=[3, 32, 32], unet=unet, ema_decay=None, warmup_steps=1)
    raise ValueError(kind)


def timed_fit(model, device, steps, precision="32-true", **fit_kwargs) -> float:
    """Seconds of `steps` Lightning training steps after WARMUP untimed ones, with a Trainer
    that does nothing else (no logging, checkpoints, validation or progress bar)."""
    import lightning.pytorch as pl

    timer = {}

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == WARMUP:
                if device == "cuda":
                    torch.cuda.synchronize()
                timer["start"] = time.perf_counter()

        def on_train_end(self, trainer, *args):
            if device == "cuda":
                torch.cuda.synchronize()
            timer["end"] = time.perf_counter()

    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        precision=precision,
        max_steps=WARMUP + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Timer()],
    )
    trainer.fit(model, **fit_kwargs)
    return timer["end"] - timer["start"]


def genlab_loop(kind, data, batch_size, steps, device, precision="32-true", **switches):
    """train.py's own objects: the DataModule, the LightningModule (with the `speed:` switches
    applied as train.py applies them) and a Trainer."""
    model = build_model(kind)
    model.apply_speed_switches(**switches)
    dm = datamodule(data, batch_size)
    return steps * batch_size / timed_fit(model, device, steps, precision, datamodule=dm)


def plain_loop(kind, data, batch_size, steps, device, fused=True):
    """The compute floor: the data already in one tensor, index a batch, step. No framework.
    Same model, loss and update as genlab's: the fused Adam kernel genlab's default picks, and
    for the DDPM its gradient-norm clipping."""
    dm = datamodule(data, batch_size)
    images, labels = (t.to(device) for t in dm.splits["train"])
    model = build_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=model.optimizer_cfg["lr"], fused=fused)
    clip = getattr(model, "hparams", {}).get("grad_clip")
    order = torch.randperm(len(images), device=device)
    for i in range(WARMUP + steps):
        if i == WARMUP:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = order[(i * batch_size) % (len(images) - batch_size) :][:batch_size]
        x = images[idx].float() / 255
        loss, _ = model.compute_terms(x, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def seed_loop(kind, data, batch_size, steps, device):
    """Seed 001's pipeline: torchvision dataset with ToTensor (one PIL image at a time) and a
    DataLoader, feeding the same model, with the seed's optimizer (torch's default Adam)."""
    import torchvision
    from torchvision import transforms

    datamodule(data, batch_size)  # stages the files where torchvision looks
    cls = torchvision.datasets.FashionMNIST
    dataset = cls(fashion_root(), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = build_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    it, done = iter(loader), 0
    while done < WARMUP + steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == WARMUP:
            start = time.perf_counter()
        loss, _ = model.compute_terms(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def alternate(runners: dict, repeats: int) -> dict[str, list[float]]:
    results = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            results[name].append(fn())
    return results


def medians(runs: dict) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in runs.items()}


def paired_ratio(runs: dict, a: str, b: str) -> float:
    """Median over repeats of a/b, each from runs made back to back: on machines whose speed
    drifts by 2x within minutes this is far steadier than a ratio of medians."""
    return statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True))


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


# -- report ------------------------------------------------------------------------------------
def versions(device):
    import lightning

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _status(value: float, bound: float, at_least: bool = True) -> str:
    if (value >= bound) if at_least else (value < bound):
        return "met"
    return f"missed by {abs(value - bound):.2f}" if at_least else f"missed by {value - bound:.2f}"


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, status) for each of issue 7's targets this run measured."""
    rows = []
    by_case: dict[str, list[dict]] = {}
    for row in results["throughput"]:
        by_case.setdefault(row["case"], []).append(row)
    for kind in ("vae", "ae"):
        found = sorted(by_case.get(f"{kind} MLP fashion_mnist", []), key=lambda r: r["batch_size"])
        if not found:
            continue
        small, large = found[0], found[-1]
        b = large["batch_size"]
        rows.append(
            (
                f"{kind.upper()} batch {b}: >= 0.85 of the plain tensor loop",
                f"{large['ratio_to_floor']:.2f}",
                _status(large["ratio_to_floor"], 0.85),
            )
        )
        rows.append(
            (
                f"{kind.upper()} batch {b}: plain loop >= 2.4x the seed 001 loop",
                f"{large['floor_over_seed001']:.2f}x",
                _status(large["floor_over_seed001"], 2.4),
            )
        )
        rows.append(
            (
                f"{kind.upper()} batch {small['batch_size']}: never slower than the seed 001 loop",
                f"{small['ratio_to_seed001']:.2f}x",
                _status(small["ratio_to_seed001"], 1.0),
            )
        )
    for row in results["throughput"]:
        if row["case"].startswith("ddpm"):
            rows.append(
                (
                    f"{row['case']} (batch {row['batch_size']}) >= 0.95 of a plain loop",
                    f"{row['ratio_to_floor']:.2f}",
                    _status(row["ratio_to_floor"], 0.95),
                )
            )
    for row in results["sampling"]:
        rows.append(
            (
                f"{row['case']}: DDIM-50 >= 18x ancestral sampling",
                f"{row['ddim50_over_ddpm']:.1f}x",
                _status(row["ddim50_over_ddpm"], 18.0),
            )
        )
    for row in results["other"]:
        if row["case"] == "startup: train.py --cfg job":
            rows.append(
                (
                    "`train.py --cfg job` < 2 s",
                    f"{row['seconds']:.2f} s",
                    _status(row["seconds"], 2.0, False),
                )
            )
        if "peak_rss_mb" in row:
            gb = row["peak_rss_mb"] / 1024
            rows.append(
                (
                    "default `python train.py` peak memory < 2 GB",
                    f"{gb:.2f} GB",
                    _status(gb, 2.0, False),
                )
            )
    return rows


def section(title: str, columns: list[str]) -> list[str]:
    """The lines that open a report section: its heading and a table header."""
    return ["", f"## {title}", "", "| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def markdown(results: dict) -> str:
    nan = float("nan")
    env = results["env"]
    lines = [
        f"# genlab benchmarks ({env['device']})",
        "",
        "Generated by `"
        + f"python benchmarks/run.py {results.get('argv', '')}".rstrip()
        + "`; "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + ". Ratios are medians over repeats of runs made back to back (see docs/speed.md).",
        *section("Targets", ["target", "measured", "status"]),
        *(f"| {t} | {m} | {st} |" for t, m, st in targets(results)),
        *section(
            "Training throughput",
            ["case", "batch", "genlab img/s", "plain tensor loop img/s", "seed 001 loop img/s"]
            + ["genlab / floor", "genlab / seed", "floor / seed"],
        ),
    ]
    for row in results["throughput"]:
        m = row["images_per_s"]
        lines.append(
            f"| {row['case']} | {row['batch_size']} | {m['genlab']:.0f} | "
            f"{m['plain_tensor_loop']:.0f} | {m.get('seed001_loop', nan):.0f} | "
            f"{row['ratio_to_floor']:.2f} | {row.get('ratio_to_seed001', nan):.2f} | "
            f"{row.get('floor_over_seed001', nan):.2f} |"
        )
    if results.get("switches"):
        lines += section(
            "Speed switches (genlab's training step, each switch on / all off)",
            ["case", "batch", "off img/s", "switch", "on img/s", "on / off"],
        )
        for row in results["switches"]:
            m = row["images_per_s"]
            for name, ratio in row["ratio_to_off"].items():
                lines.append(
                    f"| {row['case']} | {row['batch_size']} | {m['off']:.1f} | {name} | "
                    f"{m[name]:.1f} | {ratio:.2f} |"
                )
    if results.get("optimizer"):
        lines += section(
            "Optimizer kernel (plain loop: fused Adam, genlab's default, / torch's default)",
            ["case", "batch", "fused img/s", "default img/s", "fused / default"],
        )
        for row in results["optimizer"]:
            m = row["images_per_s"]
            lines.append(
                f"| {row['case']} | {row['batch_size']} | {m['fused']:.0f} | "
                f"{m['default']:.0f} | {row['fused_over_default']:.2f} |"
            )
    if results["sampling"]:
        lines += section(
            "Sampling",
            ["case", "batch", "DDPM (T steps) img/s", "DDIM-100 img/s", "DDIM-50 img/s"]
            + ["DDIM-50 / DDPM"],
        )
        for row in results["sampling"]:
            m = row["images_per_s"]
            lines.append(
                f"| {row['case']} | {row['batch_size']} | {m['ddpm_T']:.2f} | "
                f"{m['ddim_100']:.2f} | {m['ddim_50']:.2f} | {row['ddim50_over_ddpm']:.1f} |"
            )
    lines += section("Start-up, memory, fixed costs", ["case", "value"])
    for row in results["other"]:
        if "peak_rss_mb" in row:
            value = f"{row['peak_rss_mb']:.0f} MB peak RSS ({row['seconds']:.0f} s)"
        elif "overhead_ms" in row:
            ms = row["ms_per_step"]
            value = (
                f"{row['overhead_ms']:.2f} ms per step (Lightning {ms['lightning']:.2f} ms, "
                f"plain {ms['plain']:.2f} ms, one-parameter model)"
            )
        else:
            value = f"{row['seconds']:.2f} s"
        lines.append(f"| {row['case']} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        nargs="*",
        default=list(CASES),
        help=f"which cases to run (default all): {' '.join(CASES)}",
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per loop")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for the tests")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results-<dev>)")
    parser.add_argument(
        "--doc", default=None, help="Markdown path (default docs/benchmarks[-<dev>].md)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = device == "cuda"
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    results = {
        "env": versions(device),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "throughput": [],
        "switches": [],
        "optimizer": [],
        "sampling": [],
        "other": [],
    }
    for kind in ("vae", "ae"):
        if kind in args.cases:
            for bs in (32, 128 if args.quick else 256):
                results["throughput"].append(
                    throughput_case(
                        f"{kind} MLP fashion_mnist",
                        kind,
                        "fashion_mnist",
                        bs,
                        steps,
                        repeats,
                        device,
                    )
                )
    if "conv_vae" in args.cases:
        results["throughput"].append(
            throughput_case(
                "conv VAE cifar10-shaped", "conv_vae", "cifar10", 128, steps, repeats, device, False
            )
        )
    # On a CPU the paper-size U-Net (35.7M parameters, ~12 GFLOP per image) takes seconds per
    # image: a tiny batch and a few steps keep its cases to minutes.
    ddpm_runs = [("ddpm_small", "fashion_mnist", 128 if on_gpu else 32, max(2, steps // 10))]
    ddpm_runs.append(
        ("ddpm_paper", "cifar10", 128 if on_gpu else 2, max(2, steps // 10) if on_gpu else 3)
    )
    if args.quick:
        ddpm_runs = [(k, d, 2, 2) for k, d, _, _ in ddpm_runs]
    if "ddpm" in args.cases:
        for kind, data, bs, n in ddpm_runs:
            results["throughput"].append(
                throughput_case(f"{kind} train step", kind, data, bs, n, repeats, device, False)
            )
    if "switches" in args.cases:
        # compile on a CPU needs minutes of compiling per new shape; the paper-size U-Net's
        # switches are measured where they matter, on a GPU.
        for kind, data, bs, n in ddpm_runs[: 2 if on_gpu else 1]:
            results["switches"].append(
                switches_case(
                    kind,
                    data,
                    bs,
                    n,
                    repeats,
                    device,
                    ("off", "channels_last", "bf16-mixed") if args.quick else tuple(SWITCHES),
                )
            )
    if "optimizer" in args.cases:
        for kind in ("vae", "ae"):
            results["optimizer"].append(
                optimizer_case(
                    kind, "fashion_mnist", 32 if args.quick else 256, steps, repeats, device
                )
            )
    if "sampling" in args.cases:
        batch = 256 if on_gpu else 4
        timesteps = 50 if args.quick else 1000
        results["sampling"].append(
            sampling_case(batch, timesteps, repeats if on_gpu else 1, device)
        )
        if on_gpu and not args.quick:  # DDIM vs DDPM at the paper's CIFAR-10 U-Net size
            results["sampling"].append(
                sampling_case(batch, timesteps, 1, device, kind="ddpm_paper")
            )
    if "startup" in args.cases:
        results["other"].extend(startup_case(repeats))
    if "overhead" in args.cases:
        results["other"].append(overhead_case(100 if args.quick else 2000, repeats, device))
    if "memory" in args.cases:
        results["other"].append(default_run_memory(20 if args.quick else 200))
    out = Path(args.out or REPO / "benchmarks" / f"results-{device}.json")
    out.write_text(json.dumps(results, indent=2))
    doc = Path(
        args.doc or REPO / "docs" / ("benchmarks.md" if device == "cpu" else "benchmarks-gpu.md")
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(markdown(results))
    print(markdown(results))


CASES = (
    "vae",
    "ae",
    "conv_vae",
    "ddpm",
    "switches",
    "optimizer",
    "sampling",
    "startup",
    "overhead",
    "memory",
)

if __name__ == "__main__":
    main()
