"""The tasks of models with an encoder (capabilities.encoder: AE, VAE, CVAE): samples,
reconstructions, interpolate, manifold, traverse, latent_scatter, classes.

Where the models differ, the handlers ask `job.caps`: `gaussian_latent` (a VAE's or CVAE's prior:
prior quantiles, prior standard deviations; otherwise the spread of the test codes, which is all
an AE's codes have) and `conditional` (a CVAE's labels)."""

from __future__ import annotations

from pathlib import Path

from genlab.sample.job import Job, slerp
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


def prior_samples(job: Job) -> list[Path]:
    """n x n decodes of z drawn from the prior (VAE: N(0, I); CVAE: its class's p(z|y)). CVAE:
    n rows, one class per column (job.sample_grid), or n x n of `label=`."""
    import torch

    model = job.model
    count, columns = job.sample_grid()
    eps = torch.randn(count, model.latent_dim, generator=job.generator(), device=job.device)
    labels = job.labels_for(count)
    return job.save_grid(job.decode(model.latent_from_noise(eps, labels), labels), nrow=columns)


def reconstructions(job: Job) -> list[Path]:
    """n rows of n test images, each above its reconstruction (from the posterior mean)."""
    from genlab.viz.grids import originals_above_reconstructions

    x, y = job.test_images(job.n * job.n)
    recon = job.decode(job.encode(x, y), y)
    return job.save_grid(originals_above_reconstructions(x.cpu(), recon, per_row=job.n), job.n)


def interpolate(job: Job) -> list[Path]:
    """Rows: n pairs of test images; columns: `frames` decodes from the first code to the second
    (linear unless mode=slerp). CVAE: each code is inferred with its own label and the row is
    decoded in the first image's class, so the row morphs style within one class."""
    import torch

    n, cols = job.n, int(job.opts.frames)
    x, y = job.test_images(2 * n)
    z = job.encode(x, y)
    a, b = z[0::2], z[1::2]
    t = torch.linspace(0, 1, cols, device=job.device).view(1, cols, 1)
    a, b = a.unsqueeze(1), b.unsqueeze(1)
    path = slerp(a, b, t) if job.opts.mode == "slerp" else (1 - t) * a + t * b
    labels = y[0::2].repeat_interleave(cols)
    return job.save_grid(job.decode(path.reshape(n * cols, -1), labels), nrow=cols)


def manifold(job: Job) -> list[Path]:
    """The decoded latent plane of a 2-d latent (the task declares latent_dim == 2) as an n x n
    grid, z1 growing to the right and z2 upwards (image (0, 0) at the bottom left, as in a plot).
    Gaussian latent (VAE, CVAE): the N(0, 1) quantiles 5%..95%, an evenly weighted cover of the
    prior; otherwise (AE): the box spanned by the test codes."""
    import torch

    n, gaussian = job.n, job.caps.gaussian_latent
    if not gaussian:
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
    if job.caps.conditional:  # one class for the whole plane: label=, else class 0
        labels = torch.full((n * n,), job.class_label(), device=job.device)
    if gaussian:  # quantiles of the prior: the class's own p(z|y) for a CVAE
        z = job.model.latent_from_noise(z, labels)
    return job.save_grid(job.decode(z, labels), nrow=n)


# Rows of a traverse at most: a latent of more dims (a VQ-VAE's flattened code grid has
# thousands) shows those the test codes vary most along, in index order.
TRAVERSE_ROWS = 16


def traverse(job: Job) -> list[Path]:
    """One row per latent dim: n decodes with that dim moved from -r to +r (r=traverse_range)
    around the code of one test image. Gaussian latent (VAE, CVAE): r in prior standard
    deviations; otherwise (AE, VQ-VAE): in standard deviations of the test codes along that dim
    (such codes have no common scale). Above TRAVERSE_ROWS dims, the rows are the dims with the
    largest spread of the test codes (a VAE's active units), as printed."""
    import torch

    n, k, r = job.n, job.model.latent_dim, float(job.opts.traverse_range)
    x, y = job.test_images(1)
    center = job.encode(x, y)[0]
    scale = torch.ones(k, device=job.device)
    dims = torch.arange(k, device=job.device)
    if not job.caps.gaussian_latent or k > TRAVERSE_ROWS:
        images, labels = job.test_split()
        spread = job.encode(images, labels).std(0)
        if not job.caps.gaussian_latent:
            scale = spread
        if k > TRAVERSE_ROWS:
            dims = spread.topk(TRAVERSE_ROWS).indices.sort().values
            print(
                f"traverse: {TRAVERSE_ROWS} of {k} latent dims, those the test codes vary most "
                f"along: {', '.join(map(str, dims.tolist()))}"
            )
    offsets = torch.linspace(-r, r, n, device=job.device)
    z = center.repeat(len(dims), n, 1)  # [rows, n columns, k dims]
    rows = torch.arange(len(dims), device=job.device)
    z[rows, :, dims] += offsets.unsqueeze(0) * scale[dims].unsqueeze(1)
    labels = y.repeat(len(dims) * n)
    return job.save_grid(job.decode(z.reshape(len(dims) * n, k), labels), nrow=n)


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
    what = "mean of q(z|x)" if job.caps.gaussian_latent else "code"
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
    """One column per class (as in every class-chosen grid), n prior samples each; row i uses
    the same standard-normal draw in every column (mapped through each class's prior p(z|y)),
    so a row shows one 'style' rendered as each class."""
    import torch

    n, model = job.n, job.model
    classes = model.num_classes
    eps = torch.randn(n, model.latent_dim, generator=job.generator(), device=job.device)
    labels = torch.arange(classes, device=job.device).repeat(n)
    z = model.latent_from_noise(eps.repeat_interleave(classes, 0), labels)
    return job.save_grid(job.decode(z, labels), nrow=classes)
