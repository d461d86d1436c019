"""task=anomaly: reconstruction error as an out-of-distribution score, and its exact AUROC."""

from __future__ import annotations

import json
from pathlib import Path

from genlab import GenlabError
from genlab.sample.job import Job
from genlab.sample.writer import write_outputs

# Which dataset an in-distribution set is compared with by default (same image shape).
DEFAULT_ANOMALY_DATA = {"fashion_mnist": "mnist", "mnist": "fashion_mnist"}


def reconstruction_scores(job: Job, images, labels, desc: str):
    """-log p(x | z = mean code) per image, in nats. A conditional model (CVAE): the lowest over
    all classes, so neither dataset's labels are used (another dataset's labels mean nothing to
    the model)."""
    import torch

    model = job.model
    candidates = range(model.num_classes) if job.caps.conditional else [None]
    scores = []
    with torch.no_grad():
        for a, b in job.chunks(len(images), desc):
            x = images[a:b].to(job.device).float() / 255.0
            best = None
            for c in candidates:
                y = None if c is None else torch.full((len(x),), c, device=job.device)
                code = model.encode_mean(x, y)
                nll = model.recon_terms(model.decode(code, y), x)["recon"]
                best = nll if best is None else torch.minimum(best, nll)
            scores.append(best.cpu().double())
    return torch.cat(scores)


def rank_auroc(negatives, positives) -> float:
    """Area under the ROC curve of `score > threshold` flagging positives, computed exactly as
    P(positive score > negative score) + P(equal) / 2 (the Mann-Whitney U statistic)."""
    import torch

    neg = torch.sort(negatives.double()).values
    pos = positives.double()
    below = torch.searchsorted(neg, pos, right=False)
    not_above = torch.searchsorted(neg, pos, right=True)
    return float((below + not_above).double().sum() / (2 * len(neg) * len(pos)))


def _absolute(path) -> str:
    return str(Path(str(path)).expanduser().resolve())


def anomaly(job: Job) -> list[Path]:
    """Reconstruction error of the in-distribution test split vs another dataset's, as
    histograms and as the AUROC of using that error to flag the other dataset."""
    from genlab.viz.plots import save_figure, score_histograms

    own = job.run.data_config(job.opts.dataset, job.opts.data_dir)
    other_name = job.opts.anomaly_data or DEFAULT_ANOMALY_DATA.get(own.name)
    if other_name is None:
        raise GenlabError(
            f"task=anomaly needs a second dataset of the same image shape as {own.name}: "
            "name it with anomaly_data=<dataset> (and anomaly_data_dir=<its data root>)."
        )
    other_dir = job.opts.anomaly_data_dir or job.opts.data_dir or str(own.root)
    other = job.run.data_config(other_name, other_dir, key="anomaly_data")  # same shape only
    if other.name == own.name and _absolute(other.root) == _absolute(own.root):
        raise GenlabError(
            f"anomaly_data={other.name} is the run's own test set: compare with another dataset, "
            "or point anomaly_data_dir= at another copy."
        )
    sets = {}
    for tag, spec in (("in", own), ("out", other)):
        images, labels = job.run.test_split(spec.name, str(spec.root))
        images, labels = job.at_most(job.opts.max_images, images, labels)
        sets[tag] = reconstruction_scores(job, images, labels, f"scoring {spec.name}")
    auroc = rank_auroc(sets["in"], sets["out"])
    in_name = f"{own.name} (in-distribution)"
    out_name = other.name if other.name != own.name else f"{other.name} at {other.root}"
    print(
        f"anomaly: AUROC {auroc:.4f} for flagging {out_name} test images against {own.name} "
        "test images by reconstruction error (1 = perfect separation, 0.5 = chance)"
    )
    summary = {
        "auroc": auroc,
        "score": "reconstruction -log p(x|z=mean code) per image, nats (higher = more anomalous)",
        "in_distribution": {"data": own.name, "root": _absolute(own.root), "n": len(sets["in"])},
        "out_of_distribution": {
            "data": other.name,
            "root": _absolute(other.root),
            "n": len(sets["out"]),
        },
        "mean_score_in": float(sets["in"].mean()),
        "mean_score_out": float(sets["out"].mean()),
        "model": job.run.name,
        "checkpoint": _absolute(job.run.checkpoint),
        "seed": int(job.opts.seed),
    }
    fig = score_histograms(
        {in_name: sets["in"].numpy(), out_name: sets["out"].numpy()},
        xlabel="reconstruction error  -log p(x | z) (nats per image)",
        title=f"{job.run.name.upper()} anomaly scores: AUROC {auroc:.3f}",
    )
    return write_outputs(
        job.out_dir,
        f"anomaly-{other.name}",
        {
            ".png": lambda p: save_figure(fig, p),
            ".json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
        },
        job.opts.overwrite,
    )
