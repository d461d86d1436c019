"""Fill a folder with the wheels the GPU check needs on a bare GPU machine.

    python benchmarks/make_wheels.py            # -> wheels/ (ignored by git), then prints the
                                                #    one command to run on the GPU machine

The lent GPU machine has python 3.12 with torch, torchvision, lightning, torchmetrics, numpy,
PyYAML and packaging, but reaches no package registry, so whatever else genlab imports travels
with the work tree as a carried folder (at most 64 MiB). This script downloads those packages as
wheels for CPython 3.12 on x86-64 Linux, builds the one sdist-only package
(antlr4-python3-runtime, which Hydra pins to 4.9.*) into a wheel, adds genlab's own wheel built
from this tree, and checks the size. benchmarks/gpu_check.py installs from the folder with
`pip install --no-index --no-deps --target`, so the machine's torch/lightning stay untouched
(genlab's pyproject pins another torch, hence --no-deps).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # bytes of all carried paths together (the device tool's limit)

# Distribution -> version: what genlab imports (or its tests need) that the GPU machine lacks.
# The versions are the ones this tree's tests pass with.
PACKAGES = {
    "hydra-core": "1.3.8",
    "omegaconf": "2.3.1",
    "antlr4-python3-runtime": "4.9.3",  # sdist only on PyPI: built into a wheel here
    "pytest": "9.0.3",
    "pluggy": "1.6.0",
    "iniconfig": "2.3.0",
    "pygments": "2.20.0",  # pytest >= 8.4 imports it
    "pytest-timeout": "2.4.0",
    # Hydra imports every hydra_plugins module as it starts, genlab's Slurm launcher among them,
    # which needs these: without them each run prints an import warning (and works).
    "hydra-submitit-launcher": "1.2.0",
    "submitit": "1.5.4",
    "cloudpickle": "3.1.3",
    # The machine has these (lightning needs them); carried so that a surprise costs nothing.
    "pyyaml": "6.0.3",
    "packaging": "26.2",
}
SDIST_ONLY = {"antlr4-python3-runtime"}
# Module a package provides -> its distribution: how gpu_check tells what is missing.
MODULES = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",
    "pytest": "pytest",
    "pluggy": "pluggy",
    "iniconfig": "iniconfig",
    "pygments": "pygments",
    "pytest_timeout": "pytest-timeout",
    "hydra_plugins.hydra_submitit_launcher": "hydra-submitit-launcher",
    "submitit": "submitit",
    "cloudpickle": "cloudpickle",
    "yaml": "pyyaml",
    "packaging": "packaging",
    "genlab": "genlab",
}
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427/503): lower case, runs of
    -_. as one underscore."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_dist(path: Path) -> str:
    """The normalised distribution name of a wheel file name."""
    return normalise(path.name.split("-")[0])


def download_command(dest: Path, packages: dict[str, str] = PACKAGES) -> list[str]:
    """pip download of every binary package for the GPU machine's interpreter, not this one's."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
    cmd += TARGET
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += ["--dest", str(dest)]
    return cmd + [f"{n}=={v}" for n, v in packages.items() if n not in SDIST_ONLY]


def missing_wheels(folder: Path, packages=PACKAGES) -> list[str]:
    """The packages (and genlab) that have no wheel in `folder`."""
    have = {wheel_dist(p) for p in folder.glob("*.whl")}
    return [n for n in [*packages, "genlab"] if normalise(n) not in have]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_size(folder: Path, limit: int = CARRY_LIMIT) -> int:
    """The folder's size in bytes; raises SystemExit with the biggest files when over `limit`."""
    size = folder_size(folder)
    if size > limit:
        biggest = sorted(folder.glob("*"), key=lambda p: p.stat().st_size, reverse=True)[:5]
        listing = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in biggest)
        raise SystemExit(
            f"{folder} holds {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB that can be "
            f"carried to the GPU machine. Largest: {listing}. Drop a package from PACKAGES in "
            f"{Path(__file__).name} or carry it another way."
        )
    return size


def run(cmd: list[str], cwd: Path = REPO) -> None:
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"failed (exit code {result.returncode}): {' '.join(cmd)}")


def build_genlab_wheel(dest: Path) -> None:
    """genlab's wheel from this tree. `pip wheel` leaves a build/ folder in the repo: removed
    afterwards, unless it was there before (then it is someone else's)."""
    build = REPO / "build"
    had_build = build.exists()
    try:
        run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(dest)])
    finally:
        if build.exists() and not had_build:
            shutil.rmtree(build)


def gpu_command(folder: Path) -> str:
    rel = folder.resolve()
    rel = rel.relative_to(REPO) if rel.is_relative_to(REPO) else rel
    return f"python3 benchmarks/gpu_check.py --wheels {rel}   (carry: [{str(rel)!r}])"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO / "wheels"), help="folder (default wheels/)")
    args = parser.parse_args(argv)
    dest = Path(args.dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    ours = {normalise(n) for n in [*PACKAGES, "genlab"]}
    for old in dest.glob("*.whl"):  # older versions of our packages would be picked up too
        if wheel_dist(old) in ours:
            old.unlink()
    run(download_command(dest))
    for name in SDIST_ONLY:
        run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", f"{name}=={PACKAGES[name]}"]
            + ["-w", str(dest)]
        )
    build_genlab_wheel(dest)
    missing = missing_wheels(dest)
    if missing:
        raise SystemExit(f"no wheel in {dest} for: {', '.join(missing)}")
    size = check_size(dest)
    for p in sorted(dest.glob("*.whl")):
        print(f"  {p.stat().st_size / 2**20:6.2f} MiB  {p.name}")
    print(f"{dest}: {size / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB carry limit")
    print("On the GPU machine, from the repo root:")
    print(f"  {gpu_command(dest)}")


if __name__ == "__main__":
    main()
