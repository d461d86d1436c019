"""genlab's speed, measured side by side with the plain PyTorch loops people would write.

    python benchmarks/run.py                       # all cases, default length
    python benchmarks/run.py --cases vae ae --steps 100 --repeats 3
    python benchmarks/run.py --quick               # tiny settings (what the test runs)

Every case runs genlab and its references in this one process, alternating (a, b, c, a, b, c,
...) after a warm-up, and reports the median images/s of each and the ratio to the reference.
Results go to benchmarks/results-<device>.json and a Markdown table in docs/benchmarks.md.
Shared machines swing by 2x between runs: only ratios measured in the same run mean anything.
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
sys.path.insert(0, str(REPO / "tests"))  # the synthetic-data writers used by the test suite


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
        unet = dict(
            base_channels=128,
            channel_mults=[1, 2, 2, 2],
            num_res_blocks=2,
            attn_resolutions=[16],
            dropout=0.1,
        )
        return DDPM(image_shape=[3, 32, 32], unet=unet, ema_decay=None, warmup_steps=1)
    raise ValueError(kind)


def genlab_loop(kind, data, batch_size, steps, device):
    """train.py's own objects: the DataModule, the LightningModule and a Trainer."""
    import lightning.pytorch as pl

    dm = datamodule(data, batch_size)
    model = build_model(kind)
    timer = {}

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 5:  # the first steps are warm-up
                timer["start"] = time.perf_counter()

        def on_train_end(self, trainer, *args):
            if device == "cuda":
                torch.cuda.synchronize()
            timer["end"] = time.perf_counter()

    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        max_steps=5 + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[Timer()],
    )
    trainer.fit(model, datamodule=dm)
    return steps * batch_size / (timer["end"] - timer["start"])


def plain_loop(kind, data, batch_size, steps, device):
    """The compute floor: the data already in one tensor, index a batch, step. No framework."""
    dm = datamodule(data, batch_size)
    images, labels = (t.to(device) for t in dm.splits["train"])
    model = build_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(images), device=device)
    for i in range(5 + steps):
        if i == 5:
            start = time.perf_counter()
        idx = order[(i * batch_size) % (len(images) - batch_size) :][:batch_size]
        x = images[idx].float() / 255
        loss, _ = model.compute_terms(x, labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def seed_loop(kind, data, batch_size, steps, device):
    """Seed 001's pipeline: torchvision dataset with ToTensor (one PIL image at a time) and a
    DataLoader, feeding the same model."""
    import torchvision
    from torchvision import transforms

    datamodule(data, batch_size)  # stages the files where torchvision looks
    cls = torchvision.datasets.FashionMNIST
    dataset = cls(fashion_root(), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = build_model(kind).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    it, done = iter(loader), 0
    while done < 5 + steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == 5:
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


def throughput_case(name, kind, data, batch_size, steps, repeats, device, with_seed=True):
    runners = {
        "genlab": lambda: genlab_loop(kind, data, batch_size, steps, device),
        "plain_tensor_loop": lambda: plain_loop(kind, data, batch_size, steps, device),
    }
    if with_seed:
        runners["seed001_loop"] = lambda: seed_loop(kind, data, batch_size, steps, device)
    runs = alternate(runners, repeats)
    med = {k: statistics.median(v) for k, v in runs.items()}
    row = {
        "case": name,
        "batch_size": batch_size,
        "images_per_s": med,
        "runs": runs,
        "ratio_to_floor": med["genlab"] / med["plain_tensor_loop"],
    }
    if with_seed:
        row["ratio_to_seed001"] = med["genlab"] / med["seed001_loop"]
        row["floor_over_seed001"] = med["plain_tensor_loop"] / med["seed001_loop"]
    return row


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
    med = {k: statistics.median(v) for k, v in runs.items()}
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
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "train.py"), "--cfg", "job"],
            check=True,
            capture_output=True,
            cwd=REPO,
        )
        times.append(time.perf_counter() - start)
    return {
        "case": "startup: train.py --cfg job",
        "seconds": statistics.median(times),
        "runs": times,
    }


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


def markdown(results: dict) -> str:
    lines = [
        f"# genlab benchmarks ({results['env']['device']})",
        "",
        "Generated by `python benchmarks/run.py`; "
        + ", ".join(f"{k} {v}" for k, v in results["env"].items()),
        "",
    ]
    lines += [
        "| case | batch | genlab img/s | plain tensor loop img/s | seed 001 loop img/s | "
        "genlab / floor | genlab / seed | floor / seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["throughput"]:
        m = row["images_per_s"]
        lines.append(
            f"| {row['case']} | {row['batch_size']} | {m['genlab']:.0f} | "
            f"{m['plain_tensor_loop']:.0f} | {m.get('seed001_loop', float('nan')):.0f} | "
            f"{row['ratio_to_floor']:.2f} | {row.get('ratio_to_seed001', float('nan')):.2f} | "
            f"{row.get('floor_over_seed001', float('nan')):.2f} |"
        )
    lines += [
        "",
        "| sampling case | batch | DDPM (T steps) img/s | DDIM-100 img/s | DDIM-50 img/s "
        "| DDIM-50 / DDPM |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["sampling"]:
        m = row["images_per_s"]
        lines.append(
            f"| {row['case']} | {row['batch_size']} | {m['ddpm_T']:.2f} | "
            f"{m['ddim_100']:.2f} | {m['ddim_50']:.2f} | {row['ddim50_over_ddpm']:.1f} |"
        )
    lines += ["", "| other | value |", "|---|---|"]
    for row in results["other"]:
        value = (
            f"{row['seconds']:.2f} s"
            if "peak_rss_mb" not in row
            else f"{row['peak_rss_mb']:.0f} MB peak RSS ({row['seconds']:.0f} s)"
        )
        lines.append(f"| {row['case']} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        nargs="*",
        default=["vae", "ae", "conv_vae", "ddpm", "sampling", "startup", "memory"],
    )
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per loop")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for the tests")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results-<dev>)")
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    results = {"env": versions(device), "throughput": [], "sampling": [], "other": []}
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
                "conv VAE cifar10-shaped",
                "conv_vae",
                "cifar10",
                128,
                steps,
                repeats,
                device,
                with_seed=False,
            )
        )
    if "ddpm" in args.cases:
        # On a CPU the paper-size U-Net (35.7M parameters, ~12 GFLOP per image) takes seconds
        # per image: a tiny batch and a few steps keep the case to minutes.
        on_gpu = device == "cuda"
        for kind, bs, n in (
            ("ddpm_small", 32 if args.quick or not on_gpu else 128, max(2, steps // 10)),
            (
                "ddpm_paper",
                2 if args.quick or not on_gpu else 128,
                2 if args.quick else (max(2, steps // 10) if on_gpu else 3),
            ),
        ):
            data = "fashion_mnist" if kind == "ddpm_small" else "cifar10"
            results["throughput"].append(
                throughput_case(
                    f"{kind} train step", kind, data, bs, n, repeats, device, with_seed=False
                )
            )
    if "sampling" in args.cases:
        batch = 256 if device == "cuda" else 4
        results["sampling"].append(
            sampling_case(
                batch, 50 if args.quick else 1000, repeats if device == "cuda" else 1, device
            )
        )
    if "startup" in args.cases:
        results["other"].append(startup_case(repeats))
    if "memory" in args.cases:
        results["other"].append(default_run_memory(20 if args.quick else 200))
    out = Path(args.out or REPO / "benchmarks" / f"results-{device}.json")
    out.write_text(json.dumps(results, indent=2))
    Path(args.doc).parent.mkdir(parents=True, exist_ok=True)
    Path(args.doc).write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
