"""Tasks of the latent-variable models (AE, VAE, CVAE): samples, reconstructions, interpolate,
manifold, traverse, latent_scatter, classes."""

from __future__ import annotations

from pathlib import Path

from genlab import GenlabError
from genlab.sample.job import Job
from genlab.sample.writer import write_outputs

# fmt: off
CLASS_NAMES = {
    "mnist": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
# fmt: on


# -- tasks -----------------------------------------------------------------------------------------
def prior_samples(job: Job) -> list[Path]:
    """n x n decodes of z drawn from the prior (VAE: N(0, I); CVAE: its class's p(z|y)). CVAE:
    labels cycle over the classes (each column one class when n is a multiple of the class
    count), or all `label=`."""
    import torch

    n, model = job.n, job.model
    eps = torch.randn(n * n, model.latent_dim, generator=job.generator(), device=job.device)
    labels = None
    if job.run.name == "cvae":
        if job.opts.label is None:
            labels = model.preview_labels(n * n)
        else:
            labels = torch.full((n * n,), job.class_label(), device=job.device)
    return job.save_grid(job.decode(model.latent_from_noise(eps, labels), labels), nrow=n)


def reconstructions(job: Job) -> list[Path]:
    """n rows of n test images, each above its reconstruction (from the posterior mean)."""
    from genlab.viz.grids import originals_above_reconstructions

    x, y = job.test_images(job.n * job.n)
    recon = job.decode(job.encode(x, y), y)
    return job.save_grid(originals_above_reconstructions(x.cpu(), recon, per_row=job.n), job.n)


def _slerp(a, b, t):
    """Spherical interpolation: for Gaussian codes it keeps the norm typical of the prior,
    where a straight line through the origin's low-density shell would not."""
    import torch

    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    nearly_parallel = sin.abs() < 1e-6
    safe = torch.where(nearly_parallel, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / safe
    return torch.where(nearly_parallel, (1 - t) * a + t * b, spherical)


def interpolate(job: Job) -> list[Path]:
    """Rows: n pairs of test images; columns: `steps` decodes from the first code to the second.
    CVAE: each code is inferred with its own label and the row is decoded in the first image's
    class, so the row morphs style within one class."""
    import torch

    n, steps = job.n, job.interpolants
    x, y = job.test_images(2 * n)
    z = job.encode(x, y)
    a, b = z[0::2], z[1::2]
    t = torch.linspace(0, 1, steps, device=job.device).view(1, steps, 1)
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    path = _slerp(a, b, t) if job.opts.mode == "slerp" else (1 - t) * a + t * b
    labels = y[0::2].repeat_interleave(steps)
    return job.save_grid(job.decode(path.reshape(n * steps, -1), labels), nrow=steps)


def manifold(job: Job) -> list[Path]:
    """The decoded latent plane of a 2-d latent as an n x n grid, z1 growing to the right and
    z2 upwards (image (0, 0) at the bottom left, as in a plot). VAE, CVAE: the N(0, 1) quantiles
    5%..95%, an evenly weighted cover of the prior; AE: the box spanned by the test codes."""
    import torch

    k = job.model.latent_dim
    if k != 2:
        raise GenlabError(
            f"task=manifold draws the latent plane of a 2-d latent, but this {job.run.name} has "
            f"latent_dim={k}. Use task=traverse to vary one latent dim at a time, or train with "
            "model.latent_dim=2."
        )
    n = job.n
    if job.run.name == "ae":
        images, labels = job.test_split()
        codes = job.encode(images, labels)
        lo, hi = codes.min(0).values, codes.max(0).values
        axes = [torch.linspace(float(lo[d]), float(hi[d]), n, device=job.device) for d in (0, 1)]
    else:
        quantiles = torch.linspace(0.05, 0.95, n, device=job.device)
        normal = torch.distributions.Normal(0.0, 1.0)
        axes = [normal.icdf(quantiles)] * 2
    z1 = axes[0].repeat(n)  # column index -> z1
    z2 = axes[1].flip(0).repeat_interleave(n)  # top row holds the largest z2
    z = torch.stack([z1, z2], dim=1)
    labels = None
    if job.run.name == "cvae":
        labels = torch.full((n * n,), job.class_label(), device=job.device)
    if job.run.name != "ae":  # quantiles of the prior: the class's own p(z|y) for a CVAE
        z = job.model.latent_from_noise(z, labels)
    return job.save_grid(job.decode(z, labels), nrow=n)


def traverse(job: Job) -> list[Path]:
    """One row per latent dim: n decodes with that dim moved from -r to +r (r=traverse_range)
    around the code of one test image. VAE, CVAE: r in prior standard deviations; AE: in
    standard deviations of the test codes along that dim (AE codes have no common scale)."""
    import torch

    n, k, r = job.n, job.model.latent_dim, float(job.opts.traverse_range)
    x, y = job.test_images(1)
    center = job.encode(x, y)[0]
    scale = torch.ones(k, device=job.device)
    if job.run.name == "ae":
        images, labels = job.test_split()
        scale = job.encode(images, labels).std(0)
    offsets = torch.linspace(-r, r, n, device=job.device)
    z = center.repeat(k, n, 1)  # [k rows, n columns, k dims]
    rows = torch.arange(k, device=job.device)
    z[rows, :, rows] += offsets.unsqueeze(0) * scale.unsqueeze(1)
    labels = y.repeat(k * n)
    return job.save_grid(job.decode(z.reshape(k * n, k), labels), nrow=n)


def _principal_axes(points):
    """2-d coordinates of points and the share of variance each axis explains; an exact SVD
    (torch.pca_lowrank is randomised and would make the picture depend on RNG state)."""
    import torch

    centered = points - points.mean(0)
    _, s, v = torch.linalg.svd(centered, full_matrices=False)
    var = s.pow(2)
    return centered @ v[:2].T, (var[:2] / var.sum()).tolist()


def latent_scatter(job: Job) -> list[Path]:
    """The test set's latent means in 2-d coloured by class; PCA when latent_dim > 2."""
    import torch

    from genlab.viz.plots import latent_scatter as scatter_figure
    from genlab.viz.plots import save_figure

    images, labels = job.at_most(job.opts.max_images, *job.test_split())
    codes = job.encode(images, labels).cpu().double()  # MPS has no float64
    k = codes.shape[1]
    what = "code" if job.run.name == "ae" else "mean of q(z|x)"
    if k == 1:
        points = torch.stack([codes[:, 0], labels.double()], dim=1)
        axis_labels = ("z", "class")
    elif k == 2:
        points, axis_labels = codes, ("z1", "z2")
    else:
        points, share = _principal_axes(codes)
        axis_labels = (f"PCA 1 ({share[0]:.0%} of variance)", f"PCA 2 ({share[1]:.0%} of variance)")
    spec = job.run.data_config(job.opts.dataset, job.opts.data_dir)
    fig = scatter_figure(
        points.numpy(),
        labels.numpy(),
        axis_labels=axis_labels,
        title=f"{job.run.name.upper()} latent {what}, k={k}: {len(codes)} {spec.name} test images",
        class_names=CLASS_NAMES.get(spec.name),
    )
    return write_outputs(
        job.out_dir, "latent_scatter", {".png": lambda p: save_figure(fig, p)}, job.opts.overwrite
    )


def class_rows(job: Job) -> list[Path]:
    """One row per class, n prior samples each; column j uses the same standard-normal draw in
    every row (mapped through each class's prior p(z|y)), so a column shows one 'style'
    rendered as each class."""
    import torch

    n, model = job.n, job.model
    classes = model.num_classes
    eps = torch.randn(n, model.latent_dim, generator=job.generator(), device=job.device)
    labels = torch.arange(classes, device=job.device).repeat_interleave(n)
    z = model.latent_from_noise(eps.repeat(classes, 1), labels)
    return job.save_grid(job.decode(z, labels), nrow=n)
