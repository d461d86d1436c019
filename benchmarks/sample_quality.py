"""Sample quality of trained runs in the domain classifier's feature space, for docs/results.md.

    python benchmarks/sample_quality.py RUN_OR_CKPT [...] --num-samples 1000 [--guidance 2]
    python benchmarks/sample_quality.py DDPM_RUN --sampler dpmpp_2m --steps 10 20 50 100
    python benchmarks/sample_quality.py DDPM_RUN --sampler ddim --eta 1 --steps 10 20

For each run dir or checkpoint: domain FID against the Fashion-MNIST (or MNIST) test split, the
share of samples the classifier assigns with confidence >= 0.9, and, for conditional models
(CVAE, conditional DDPM), the share classified as the class that was asked for (labels cycle
over the classes). One JSON line per run goes to stdout and, with --out, into a JSON list.
For a DDPM, --sampler (ddpm, ddim, dpmpp_2m) and --steps (one row per value; network calls =
steps, twice with guidance) measure quality against sampling cost on the same model.
The FID uses the same torchmetrics metric and features as the test stage (genlab.metrics);
compare runs only at the same --num-samples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def evaluate(
    path: str,
    num_samples: int,
    guidance: float | None,
    data_dir: str,
    seed: int,
    dataset: str = "fashion_mnist",
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
):
    """One row of scores; `dataset` applies to a bare checkpoint (a run dir says its own)."""
    from torchmetrics.image import FrechetInceptionDistance

    from genlab.metrics.classifier import FeatureView, ensure_classifier, load_classifier
    from genlab.models import MODEL_CLASSES
    from genlab.runs import load_run

    run = load_run(path, MODEL_CLASSES)
    model = run.model.eval()
    dataset = run.cfg.data.name if run.cfg is not None else dataset
    classifier, accuracy = load_classifier(
        ensure_classifier(data_dir, dataset), dataset, model.image_shape
    )
    real, _ = run.test_split(data=None if run.cfg is not None else dataset, data_dir=data_dir)
    fid = FrechetInceptionDistance(feature=FeatureView(classifier), normalize=True)
    for start in range(0, len(real), 1000):
        fid.update(real[start : start + 1000].float() / 255, real=True)
    conditional = model.capabilities.conditional
    wanted = torch.arange(num_samples) % model.num_classes if conditional else None
    generator = torch.Generator().manual_seed(seed)
    extra = {} if guidance is None else {"guidance_scale": guidance}
    if sampler is not None:
        extra["sampler"] = sampler
    if steps is not None:
        extra["steps"] = steps
    if eta is not None:
        extra["eta"] = eta
    started, fakes = time.monotonic(), []
    for start in range(0, num_samples, 250):
        labels = None if wanted is None else wanted[start : start + 250]
        count = min(250, num_samples - start)
        fakes.append(model.sample(count, labels, generator=generator, **extra).float())
    fakes = torch.cat(fakes)
    seconds = time.monotonic() - started
    fid.update(fakes, real=False)
    with torch.no_grad():
        probs = classifier(fakes).softmax(1)
    row = {
        "run": str(path),
        "model": run.name,
        "step": int(
            torch.load(run.checkpoint, weights_only=True, map_location="cpu")["global_step"]
        ),
        "num_samples": num_samples,
        "fid_domain": round(float(fid.compute()), 3),
        "confident_share": round(float((probs.max(1).values >= 0.9).float().mean()), 4),
        "classifier_accuracy": round(accuracy, 4),
        "sampling_s": round(seconds, 1),
    }
    if wanted is not None:
        row["requested_class_share"] = round(float((probs.argmax(1) == wanted).float().mean()), 4)
        if guidance is not None:
            row["guidance_scale"] = guidance
    if sampler is not None or steps is not None:
        row["sampler"], row["steps"] = sampler, steps
    if eta is not None:
        row["eta"] = eta
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run dirs or .ckpt files")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=None, help="DDPM guidance scale")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="fashion_mnist", help="for bare .ckpt files")
    parser.add_argument("--out", type=Path, default=None, help="append the rows to this JSON")
    parser.add_argument("--sampler", default=None, help="DDPM sampler: ddpm, ddim, dpmpp_2m")
    parser.add_argument("--steps", type=int, nargs="*", default=None, help="DDPM sampler steps")
    parser.add_argument(
        "--eta", type=float, default=None, help="DDIM's eta (1: ancestral on the strided chain)"
    )
    args = parser.parse_args(argv)
    rows = []
    for path in args.runs:
        for steps in args.steps or [None]:
            row = evaluate(
                path,
                args.num_samples,
                args.guidance,
                args.data_dir,
                args.seed,
                args.dataset,
                sampler=args.sampler,
                steps=steps,
                eta=args.eta,
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out is not None:
        old = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps(old + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
