"""Sample quality after testing: FID, KID and Inception Score through torchmetrics.

Two feature spaces:
- "domain": genlab's own small classifier per dataset (see genlab.metrics.classifier), which
  needs no download; logged as test/fid_domain, test/kid_domain, test/is_domain, beside the
  classifier's test accuracy (test/domain_classifier_acc).
- "inception": the standard InceptionV3 features (torch-fidelity's port of the TF weights), from a
  local weights file (`eval.inception_weights`), since machines like ours cannot download them;
  logged as test/fid, test/kid, test/is. Without the file the metric is skipped with one warning.

Grey images are repeated to 3 channels for Inception; values are clamped to [0, 1] before the
8-bit quantisation. Real-image statistics are computed once per (features, dataset, split, size)
and cached next to the data. Under DDP each rank generates its share of the samples and
torchmetrics all-reduces the feature statistics.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from genlab import GenlabError, interrupt
from genlab.progress import report

log = logging.getLogger("genlab")
INCEPTION_HINT = (
    "download pt_inception-2015-12-05-6726825d.pth (torch-fidelity's InceptionV3 weights) and "
    "set eval.inception_weights=/path/to/it"
)


def _real_stats_path(cache_dir: Path, space: str, dataset: str, variant: str, shape) -> Path:
    return cache_dir / f"{space}-{dataset}-{variant}-test-{shape[1]}x{shape[2]}.pt"


# The keys of the `eval` config group that SampleQuality takes as they are.
EVAL_KEYS = ("num_samples", "domain", "inception_weights", "kid_subset_size", "batch_size")


def sample_quality_arguments(eval_cfg, *, dataset: str, data_dir) -> dict:
    """SampleQuality's arguments from the `eval` config subtree and the data it compares with."""
    return {"dataset": dataset, "data_dir": data_dir, **{k: eval_cfg[k] for k in EVAL_KEYS}}


class SampleQuality(pl.Callback):
    def __init__(
        self,
        *,
        dataset: str,
        data_dir,
        num_samples: int = 10000,
        domain: bool = True,
        inception_weights: str | None = None,
        kid_subset_size: int = 1000,
        batch_size: int = 500,
    ):
        if num_samples < 2:
            raise GenlabError(f"Invalid config: eval.num_samples={num_samples} must be >= 2.")
        if num_samples < kid_subset_size:
            raise GenlabError(
                f"Invalid config: eval.num_samples={num_samples} is smaller than KID's subset size "
                f"eval.kid_subset_size={kid_subset_size}: lower the subset size to at most "
                "the sample count or generate more samples."
            )
        self.dataset, self.data_dir = dataset, Path(data_dir)
        self.num_samples, self.domain, self.inception_weights = (
            num_samples,
            domain,
            inception_weights,
        )
        self.kid_subset_size, self.batch_size = kid_subset_size, batch_size

    @property
    def cache_dir(self) -> Path:
        from genlab.data.folder import cache_dir

        return cache_dir(self.data_dir) / "genlab_fid_cache"  # a read-only data dir: elsewhere

    # -- feature spaces ------------------------------------------------------------------------
    def _spaces(self, image_shape, device, datamodule=None) -> dict[str, tuple]:
        """{name: (features module, logits module or None, to_input function)}."""
        from genlab.metrics.classifier import FeatureView, ensure_classifier, load_classifier

        spaces = {}
        if self.domain and not getattr(datamodule, "labelled", True):
            log.warning(
                "test/fid_domain, test/kid_domain, test/is_domain skipped: the %s data has no "
                "labels to train the domain classifier on (an image folder without class "
                "subfolders; put each class's images in its own subfolder of data.path).",
                self.dataset,
            )
        elif self.domain:
            # A named dataset's classifier trains on its standard splits (ImageDataModule.from_name)
            # and serves every run; an image folder's (its id names its files and split) on
            # this run's own data.
            dataset = getattr(datamodule, "dataset_id", self.dataset)
            own = datamodule if dataset != self.dataset else None
            path = ensure_classifier(self.data_dir, dataset, datamodule=own)
            clf, acc = load_classifier(path, dataset, image_shape)
            clf = clf.to(device)
            spaces["domain"] = (FeatureView(clf), FeatureView(clf, logits=True), lambda x: x, acc)
        # Every DDP rank gets here; the console says it once (rank 0).
        warn = log.warning if rank_zero_only.rank == 0 else log.debug
        if self.inception_weights is None:
            warn("test/fid, test/kid, test/is (Inception) skipped: no weights; %s.", INCEPTION_HINT)
        else:
            try:
                from torchmetrics.image.fid import NoTrainInceptionV3

                features = NoTrainInceptionV3(
                    "inception-v3-compat", ["2048"], str(self.inception_weights)
                ).to(device)
                logits = NoTrainInceptionV3(
                    "inception-v3-compat", ["logits_unbiased"], str(self.inception_weights)
                ).to(device)
            except Exception as err:  # wrong file, truncated download, missing torch-fidelity
                warn(
                    "test/fid (Inception) skipped: %s cannot be used (%s: %s); %s.",
                    self.inception_weights,
                    type(err).__name__,
                    err,
                    INCEPTION_HINT,
                )
            else:

                def to_uint8_rgb(x):
                    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
                    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

                spaces["inception"] = (features, logits, to_uint8_rgb, None)
        return spaces

    # -- the evaluation ------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer, pl_module) -> None:
        # Attached only to generative models (genlab.builders.callback_plan asks capabilities);
        # any module with sample() and preview_labels() can be measured.
        if trainer.datamodule is None:
            return
        # From their modules: torchmetrics.image exports these only where torch-fidelity is
        # installed (the [fid] extra), and the domain metrics need none of it.
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        device = pl_module.device
        self.dataset_id = getattr(trainer.datamodule, "dataset_id", self.dataset)
        real_images, _ = trainer.datamodule.splits["test"]
        self.variant = (
            f"binarized-{trainer.datamodule.binarize}" if trainer.datamodule.binarize else "8bit"
        )
        shape = tuple(real_images.shape[1:])
        if len(real_images) < 2:  # an image folder's test split can be this small
            log.warning(
                "test/fid*, test/kid*, test/is* skipped: the test split holds %d image; FID "
                "needs two or more (more images, or a larger data.test_fraction).",
                len(real_images),
            )
            return
        # KID draws subsets of both image sets: no larger than the real one.
        subset = min(self.kid_subset_size, len(real_images))
        rank, world = trainer.global_rank, trainer.world_size
        share = math.ceil(self.num_samples / world)
        spaces = self._spaces(shape, device, trainer.datamodule)
        if not spaces:
            return
        fakes = self._generate(pl_module, share, seed=rank)
        suffix = {"domain": "_domain", "inception": ""}
        for name, (features, logits, to_input, accuracy) in spaces.items():
            custom = name == "domain"
            fid = FrechetInceptionDistance(
                feature=features, normalize=custom, reset_real_features=False
            ).to(device)
            kid = KernelInceptionDistance(
                feature=features, normalize=custom, subset_size=subset
            ).to(device)
            # normalize=False: torchmetrics' IS turns normalised images into bytes 0..255 even for
            # a custom feature module (FID and KID do not), so the domain classifier would see
            # 255x its inputs. The inputs here are already what each feature space expects.
            score = InceptionScore(feature=logits, normalize=False).to(device)
            self._add_real(fid, kid, real_images, to_input, name, shape, rank, world, device)
            for start in range(0, len(fakes), self.batch_size):
                batch = to_input(fakes[start : start + self.batch_size].to(device))
                fid.update(batch, real=False)
                kid.update(batch, real=False)
                score.update(batch)
            kid_mean, _ = kid.compute()
            is_mean, _ = score.compute()
            tag = suffix[name]
            values = {
                f"test/fid{tag}": fid.compute(),
                f"test/kid{tag}": kid_mean,
                f"test/is{tag}": is_mean,
            }
            if accuracy is not None:
                values["test/domain_classifier_acc"] = torch.tensor(accuracy)
            values[f"test/quality_samples{tag}"] = torch.tensor(float(share * world))
            # Every rank holds the same values (torchmetrics gathers the states in compute()):
            # their mean is each value, and Lightning has no reason to warn about syncing.
            for key, value in values.items():
                pl_module.log(key, value.float().to(device), sync_dist=True)

    @torch.no_grad()
    def _generate(self, pl_module, n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator(device=pl_module.device).manual_seed(10_000 + seed)
        out = []
        for start in range(0, n, self.batch_size):
            interrupt.poll()
            report("sample quality: generating", start, n, unit="images")
            count = min(self.batch_size, n - start)
            labels = pl_module.preview_labels(count)
            out.append(pl_module.sample(count, labels, generator=generator).float().cpu())
        report("sample quality: generating", n, n, unit="images")
        return torch.cat(out)

    def _add_real(self, fid, kid, real_images, to_input, name, shape, rank, world, device):
        """Real-image features for FID from the cache (or computed and cached), and for KID."""
        variant = getattr(self, "variant", "grey")
        dataset = getattr(self, "dataset_id", self.dataset)
        path = _real_stats_path(self.cache_dir, name, dataset, variant, shape)
        shard = real_images[rank::world]
        cached = None
        if path.is_file() and world == 1:
            from genlab.checkpoints import load_checkpoint

            cached = load_checkpoint(path)
            for key in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
                setattr(fid, key, cached[key].to(device))
        for start in range(0, len(shard), self.batch_size):
            interrupt.poll()
            batch = to_input(shard[start : start + self.batch_size].to(device).float() / 255)
            if cached is None:
                fid.update(batch, real=True)
            kid.update(batch, real=True)
        if cached is None and world == 1:
            from genlab.checkpoints import save_atomic

            state = {
                k: getattr(fid, k).cpu()
                for k in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
            }
            save_atomic(state, path)
