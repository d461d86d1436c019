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
docs/benchmarks-cuda.md on a GPU (docs/benchmarks-gpu.md is gpu_check.py's), whose first
table checks issue 7's targets. Shared machines
swing by 2x between runs: only ratios measured in the same run mean anything.

Layout: harness.py (timing, paired ratios, writing results), loops.py (the measured
training loops), cases.py (the cases), report.py (the Markdown report); this file is the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from cases import CASES
from harness import REPO, Plan, versions, write_results
from report import markdown


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
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    plan = Plan(device=device, steps=steps, repeats=repeats, quick=args.quick)
    results = {
        "env": versions(device),
        "argv": " ".join(argv if argv is not None else sys.argv[1:]),
        "throughput": [],
        "switches": [],
        "optimizer": [],
        "sampling": [],
        "other": [],
    }
    for name, case in CASES.items():
        if name in args.cases:
            for section, row in case(plan):
                results[section].append(row)
    out = Path(args.out or REPO / "benchmarks" / f"results-{device}.json")
    doc = Path(
        args.doc or REPO / "docs" / ("benchmarks.md" if device == "cpu" else "benchmarks-cuda.md")
    )
    report = markdown(results)
    write_results(results, out, doc, report)
    print(report)


if __name__ == "__main__":
    main()
