"""Denoising diffusion probabilistic model (Ho et al. 2020).

Training is Algorithm 1 (the "simple" loss: MSE between the network output and its target at a
uniformly drawn timestep); sampling is any sampler of genlab.diffusion.SAMPLERS (`sampler`, else
Algorithm 2's ancestral T steps, or DDIM (Song et al. 2021) with `sample_steps` < T), its
options resolved by genlab.sampler_rules.plan_sampling. The schedule, samplers and bound are
plain tensor math in genlab.diffusion; this file wires them to a U-Net and to Lightning. Images
are mapped from the data's [0, 1] to [-1, 1]. EMA of the weights (Lightning's
EMAWeightAveraging, added by genlab.train when `ema_decay` is set) is what validation, test,
sampling and checkpoints use.

Optional class conditioning: a label embedding added to the time embedding, trained with labels
dropped to a "null" label with probability `cond_drop_prob`, so that sampling can apply
classifier-free guidance (Ho & Salimans 2022): eps = eps(x, y) + w * (eps(x, y) - eps(x, null)).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from genlab import GenlabError
from genlab.diffusion import (
    DiffusionSchedule,
    check_steps,
    default_sampler,
    guided,
    make_sampler,
    sample_loop,
    vlb_terms,
)
from genlab.models.base import Capabilities, GenerativeModule, eval_mean
from genlab.models.ddpm.spec import DDPMSpec
from genlab.nets.unet import UNet
from genlab.sampler_rules import (
    MODEL_SAMPLER,
    SAMPLER_RULES,
    ModelSampling,
    SamplerPlan,
    plan_sampling,
)

log = logging.getLogger("genlab")

# Test-set variational bound in bits/dim, and its parts: L_T, sum of L_{t-1}, L_0.
BPD_PARTS = DDPMSpec.test_metric_names


class DDPM(GenerativeModule):
    metric_names = ("loss",)
    networks = ("net",)

    spec_class = DDPMSpec

    def __init__(self, spec: DDPMSpec | None = None, **fields):
        super().__init__(spec, **fields)
        spec = self.spec
        self.num_classes, self.conditional = spec.num_classes, spec.conditional
        self.prediction, self.variance, self.clip_x0 = spec.prediction, spec.variance, spec.clip_x0
        self.sample_steps = spec.sample_steps or spec.timesteps
        self.eta, self.guidance_scale = spec.eta, spec.guidance_scale
        self.preview_every_n_epochs = spec.preview_every_n_epochs
        self.schedule = DiffusionSchedule.from_name(spec.schedule, spec.timesteps)
        self.net = self.build_net()
        if not MODEL_SAMPLER.ok(spec.sampler):  # a checkpoint's hyperparameters are data
            raise GenlabError(
                f"Invalid model spec: sampler={spec.sampler!r}. sampler must be "
                f"{MODEL_SAMPLER.accepted}."
            )
        self._check_sampling(self.sample_steps, spec.guidance_scale)
        for part in BPD_PARTS:
            self.eval_metrics[f"test_{part}"] = eval_mean()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            generative=True,
            encoder=False,
            conditional=self.conditional,
            diffusion=True,
            gaussian_latent=False,  # x_T is Gaussian noise, but of the image's shape, no code
            latent_dim=None,
        )

    def _check_sampling(self, steps: int, guidance_scale: float) -> None:
        check_steps(steps, self.schedule.timesteps)
        if guidance_scale and not self.conditional:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a class-conditional model "
                "(train with model.conditional=true)"
            )

    # -- training ------------------------------------------------------------------------------
    def _labels_for_training(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.conditional:
            return None
        drop = torch.rand(y.shape[0], device=y.device) < self.spec.cond_drop_prob
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def build_net(self) -> torch.nn.Module:
        """The denoiser net(x_t, t, labels): a U-Net of the image's shape (the latent DDPM
        builds one for its latents). Also sets `noise_shape`, the shape of one x_T."""
        c, h, _ = self.noise_shape = self.image_shape
        return UNet(
            in_channels=c,
            image_size=h,
            num_classes=self.spec.num_classes if self.spec.conditional else None,
            **dataclasses.asdict(self.spec.unet),
        )

    def compute_terms(self, x, y, generator: torch.Generator | None = None):
        return self.diffusion_loss(x * 2 - 1, y, generator)

    def diffusion_loss(self, x0, y, generator: torch.Generator | None = None):
        """(mean loss, {}) of Algorithm 1 on clean data x0 (images in [-1, 1], or normalised
        latents): uniform t, the prediction target's MSE averaged over each item's values;
        `generator` fixes t and noise (held-out losses)."""
        t = torch.randint(
            0, self.schedule.timesteps, (x0.shape[0],), device=x0.device, generator=generator
        )
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        labels = self._labels_for_training(y) if generator is None else self._eval_labels(y)
        output = self.net(x_t, t, labels)
        target = self.schedule.target(x0, noise, t, self.prediction)
        per_item = F.mse_loss(output.float(), target.float(), reduction="none").flatten(1).mean(1)
        if generator is None:  # held-out losses stay the unweighted MSE, comparable across runs
            per_item = per_item * self.schedule.loss_weight(
                t, self.prediction, self.spec.min_snr_gamma
            )
        return per_item.mean(), {}

    def _eval_labels(self, y):
        return y if self.conditional else None

    def _eval_step(self, stage: str, batch) -> None:
        # A fixed generator per batch: held-out losses see the same t and noise every epoch,
        # so their curve shows the model, not the draw.
        x, y = batch
        self._check_shape(x)
        index = getattr(self, "_eval_batch_index", 0)
        generator = torch.Generator(device=x.device).manual_seed(index)
        loss, _ = self.compute_terms(x, y, generator=generator)
        self.eval_metrics[f"{stage}_loss"].update(loss.detach(), weight=x.shape[0])
        self.log(f"{stage}/loss", self.eval_metrics[f"{stage}_loss"], on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._eval_batch_index = batch_idx
        super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_batch_index = batch_idx
        super().test_step(batch, batch_idx)
        limit = self.spec.test_bpd_images
        seen = batch_idx * self.trainer.datamodule.eval_batch_size if self.trainer.datamodule else 0
        if limit is None or seen < limit:
            x, y = batch
            x = x if limit is None else x[: max(0, limit - seen)]
            self._update_bpd(x, y[: len(x)])

    def _update_bpd(self, x, y) -> None:
        labels = self._eval_labels(y)
        denoise = lambda x_t, t: self.net(
            x_t, t, None if labels is None else labels.repeat(len(x_t) // len(labels))
        )
        terms = vlb_terms(
            denoise,
            x * 2 - 1,
            self.schedule,
            prediction=self.prediction,
            variance=self.variance,
            t_batch_chunk=self.spec.bpd_t_chunk,
        )
        per_dim = math.log(2) * terms.num_dims
        parts = {
            "bpd": terms.bits_per_dim,
            "bpd_prior": terms.prior_nats / per_dim,
            "bpd_diffusion": terms.kl_sum_nats / per_dim,
            "bpd_decoder": terms.decoder_nats / per_dim,
        }
        for name, values in parts.items():
            metric = self.eval_metrics[f"test_{name}"]
            metric.update(values.float())
            self.log(f"test/{name}", metric, on_epoch=True)

    # -- optimisation --------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        planned = self.trainer.estimated_stepping_batches
        # The warm-up of the run's schedule (conf/scheduler/ takes it from model.warmup_steps).
        warmup = int((self.scheduler_cfg or {}).get("warmup_steps") or 0)
        if math.isfinite(planned) and warmup > 0.5 * planned:
            log.warning(
                "model.warmup_steps=%d is more than half of this run's %d optimizer steps: the "
                "learning rate stays below model.optimizer.lr for most of the run. Lower it "
                "(e.g. model.warmup_steps=%d) or train longer.",
                warmup,
                planned,
                max(1, int(planned) // 10),
            )

    # -- sampling ------------------------------------------------------------------------------
    def denoise_fn(self, labels: torch.Tensor | None = None, guidance_scale: float = 0.0):
        """The network with labels and guidance folded in, as the sampling loop calls it."""
        labels = labels if self.conditional else None
        return guided(self.net, labels, self.num_classes, guidance_scale)

    @property
    def sampling(self) -> ModelSampling:
        """What this model brings to a sampler plan (genlab.sampler_rules)."""
        return ModelSampling(
            kind=self.kind,
            timesteps=self.schedule.timesteps,
            sample_steps=self.sample_steps,
            sampler=self.spec.sampler,
            eta=self.eta,
            guidance_scale=self.guidance_scale,
            conditional=self.conditional,
        )

    def sampler_plan(
        self, sampler=None, steps=None, eta=None, guidance_scale=None, *, deterministic_for=None
    ) -> SamplerPlan:
        """The options (None: this model's own setting) checked and resolved, or a GenlabError:
        the one rule of sample.py, genlab.load(...).sample and the test stage."""
        return plan_sampling(
            self.sampling, sampler, steps, eta, guidance_scale, deterministic_for=deterministic_for
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
        x_T: torch.Tensor | None = None,
        return_trajectory_at=None,
        progress: bool = False,
    ):
        """n images in [0, 1], drawn as `sampler_plan` resolves the options: `sampler` a name of
        genlab.diffusion.SAMPLERS; left out, `model.sampler`, else ancestral when steps == T and
        DDIM for fewer."""
        plan = self.sampler_plan(sampler, steps, eta, guidance_scale)
        chosen = make_sampler(
            plan.sampler,
            self.schedule,
            plan.steps,
            prediction=self.prediction,
            clip_x0=self.clip_x0,
            variance=self.variance,
            **({} if plan.eta is None else {"eta": plan.eta}),
        )
        was_training = self.training
        self.eval()
        try:
            out = sample_loop(
                chosen,
                self.net,
                (n, *self.noise_shape),
                labels=labels if self.conditional else None,
                null_label=self.num_classes,
                guidance_scale=plan.guidance_scale,
                generator=generator,
                device=self.device,
                x_T=x_T,
                return_trajectory_at=return_trajectory_at,
                progress=progress,
            )
        finally:
            self.train(was_training)
        if return_trajectory_at is not None:
            images, trajectory = out
            return self.to_images(images), {t: self.to_images(v) for t, v in trajectory.items()}
        return self.to_images(out)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] of the sampler's output (x_0 or an x_t): here pixels in [-1, 1]."""
        return (x + 1) / 2

    def preview_labels(self, n: int) -> torch.Tensor | None:
        return torch.arange(n, device=self.device) % self.num_classes if self.conditional else None

    def preview_images(self, x, y):
        generator = torch.Generator(device=self.device).manual_seed(0)
        T = self.schedule.timesteps
        steps = min(self.spec.preview_steps, T)
        sampler = self.spec.sampler  # an all-steps one would ignore preview_steps: the rule's
        if sampler is None or SAMPLER_RULES[sampler].all_steps:
            sampler = default_sampler(steps, T)
        labels = self.preview_labels(len(x))
        return {"samples": self.sample(len(x), labels, generator, steps=steps, sampler=sampler)}
