"""Every bad command line exits 2 with one paragraph naming the key (or file) and the fix, and no
traceback (issue 14, item 8): a table of bad inputs to train.py, sample.py and a sweep's
precheck (`train.py -m`).

The table runs in-process through `exit_of`, the path the scripts take: genlab.cli.start (the
precheck, then Hydra's main, here a compose of the same overrides) for train.py and a sweep;
quote_paths, the precheck and the script's main for sample.py. A handful of rows run as real
subprocesses too (`test_end_to_end`), for the exit code and stderr as a user sees them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures import REPO
from omegaconf import OmegaConf

from genlab.composition import compose

HUGE = 10**9  # a latent size no machine holds (16 bytes a parameter when training)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN, SAMPLE = _script("train"), _script("sample")


# -- the table ------------------------------------------------------------------------------------
# (entry, argv, what the message must name, a word of the fix or None). `{x}` in argv is a file
# of `files` below; entries: train (python train.py), sweep (python train.py -m), sample.
def _models() -> list[tuple]:
    rows = []
    for model in ("ae", "vae", "cvae"):
        m = f"model={model}"
        rows += [
            ("train", [m, "+model.bogus=1"], "model.bogus", "Drop"),
            ("train", [m, "model.bogus=1"], "model.bogus", "+model.bogus"),
            ("train", [m, "+model.mlp.bogus=1"], "model.mlp.bogus", "Drop"),
            ("train", [m, "+model.conv.bogus=1"], "model.conv.bogus", "Drop"),
            ("train", [m, "model.latent_dim=abc"], "model.latent_dim", "integer"),
            ("train", [m, "model.latent_dim=0"], "model.latent_dim", ">= 1"),
            ("train", [m, "model.latent_dim=2.5"], "model.latent_dim", "integer"),
            ("train", [m, f"model.latent_dim={HUGE}"], "model.latent_dim", "smaller"),
            ("train", [m, "model.arch=conv", f"model.latent_dim={HUGE}"], "model.latent_dim", None),
            (
                "train",
                [m, "model.arch=mlp", "model.mlp.hidden=[100000000]"],
                "model.mlp.hidden",
                None,
            ),
            ("train", [m, "model.arch=resnet"], "model.arch", "mlp"),
            ("train", [m, "model.likelihood=poisson"], "model.likelihood", "bernoulli"),
            ("train", [m, "model.reduction=median"], "model.reduction", "sum"),
            ("train", [m, "model.lr_schedule=cosine"], "model.lr_schedule", "scheduler=warmup"),
            ("train", [m, "model.gaussian_sigma=0"], "model.gaussian_sigma", "> 0"),
            ("train", [m, "model.mlp.hidden=[0]"], "model.mlp.hidden", "positive"),
            ("train", [m, "model.conv.channels=[]"], "model.conv.channels", "non-empty"),
            ("train", [m, "model.conv.fc_dim=0"], "model.conv.fc_dim", ">= 1"),
            ("train", [m, "model.num_classes=0"], "model.num_classes", ">= 1"),
            ("train", [m, "model.optimizer.lr=0"], "model.optimizer.lr", "> 0"),
            ("train", [m, "model.optimizer.lr=abc"], "model.optimizer.lr", "> 0"),
            ("train", [m, "model.optimizer.weight_decay=-1"], "model.optimizer.weight_decay", ">="),
            ("train", [m, "+model.optimizer.betas=[0.9,1.5]"], "model.optimizer.betas", "[0, 1)"),
            ("train", [m, "+model.optimizer.bogus=1"], "model.optimizer.bogus", "Drop"),
            ("train", [m, "model.optimizer._target_=torch.optim.Bogus"], "_target_", "torch.optim"),
            ("train", [m, "model.optimizer.fused=maybe"], "model.optimizer.fused", "null"),
            ("train", [m, "model.image_shape=[3,32,32]"], "model.image_shape", "drop"),
        ]
    for model in ("vae", "cvae"):
        m = f"model={model}"
        rows += [
            ("train", [m, "model.beta=-1"], "model.beta", ">= 0"),
            ("train", [m, "model.beta=abc"], "model.beta", ">= 0"),
            ("train", [m, "model.iwae_k_val=-1"], "model.iwae_k_val", ">= 0"),
            ("train", [m, "model.iwae_k_test=abc"], "model.iwae_k_test", ">= 0"),
        ]
    rows += [
        ("train", ["model=cvae", "model.label_encoding=bogus"], "model.label_encoding", "onehot"),
        ("train", ["model=cvae", "model.label_embed_dim=0"], "model.label_embed_dim", ">= 1"),
    ]
    rows.append(
        ("train", ["model=cvae", "model.label_dropout=0"], "model.guidance_scale", "=0 for")
    )
    q = "model=vqvae"
    rows += [
        ("train", [q, "model.num_codes=0"], "model.num_codes", ">= 1"),
        ("train", [q, "model.code_dim=abc"], "model.code_dim", ">= 1"),
        ("train", [q, f"model.num_codes={HUGE}"], "model.num_codes", "smaller"),
        ("train", [q, "model.channels=[100000,100000]"], "model.channels", "smaller"),
        ("train", [q, "model.codebook_update=kmeans"], "model.codebook_update", "ema"),
        ("train", [q, "model.codebook_decay=1"], "model.codebook_decay", "(0, 1)"),
        ("train", [q, "model.beta_commit=-1"], "model.beta_commit", ">= 0"),
    ]
    d = "model=ddpm"
    rows += [
        ("train", [d, "+model.bogus=1"], "model.bogus", "Drop"),
        ("train", [d, "+model.unet.bogus=1"], "model.unet.bogus", "Drop"),
        ("train", [d, "model.latent_dim=4"], "model.latent_dim", None),
        ("train", [d, "model.timesteps=0"], "model.timesteps", ">= 1"),
        ("train", [d, "model.timesteps=abc"], "model.timesteps", ">= 1"),
        ("train", [d, "model.timesteps=10"], "model.timesteps", "cosine"),
        ("train", [d, "model.schedule=bogus"], "model.schedule", "linear"),
        ("train", [d, "model.prediction=bogus"], "model.prediction", "eps"),
        ("train", [d, "model.variance=bogus"], "model.variance", "beta_tilde"),
        ("train", [d, "model.sample_steps=0"], "model.sample_steps", "between"),
        ("train", [d, "model.sample_steps=5000"], "model.sample_steps", "between"),
        ("train", [d, "model.eta=-1"], "model.eta", "[0, 1]"),
        ("train", [d, "model.unet.base_channels=0"], "model.unet.base_channels", ">= 1"),
        ("train", [d, "model.unet.base_channels=1000000"], "model.unet.base_channels", "smaller"),
        ("train", [d, "model.unet.channel_mults=[]"], "model.unet.channel_mults", "non-empty"),
        ("train", [d, "model.unet.channel_mults=[1,2,2,2,2]"], "channel_mults", "fewer"),
        ("train", [d, "model.unet.dropout=1.5"], "model.unet.dropout", "[0, 1)"),
        ("train", [d, "model.unet.attn_resolutions=[5]"], "model.unet.attn_resolutions", "sizes"),
        ("train", [d, "model.cond_drop_prob=1"], "model.cond_drop_prob", "[0, 1)"),
        ("train", [d, "model.guidance_scale=-1"], "model.guidance_scale", "[0, 100]"),
        ("train", [d, "model.guidance_scale=2"], "model.guidance_scale", "conditional=true"),
        ("train", [d, "model.ema_decay=1.5"], "model.ema_decay", "(0, 1)"),
        ("train", [d, "model.ema_power=0"], "model.ema_power", "(0, 1]"),
        ("train", [d, "model.warmup_steps=-1"], "model.warmup_steps", ">= 0"),
        ("train", ["scheduler=warmup_cosine", "scheduler.warmup_steps=-1"], "warmup_steps", ">= 0"),
        ("train", ["scheduler=bogus"], "scheduler=bogus", "warmup_cosine"),
        ("train", [d, "model.bpd_t_chunk=0"], "model.bpd_t_chunk", ">= 1"),
        ("train", [d, "model.preview_steps=0"], "model.preview_steps", ">= 1"),
        ("train", [d, "model.clip_x0=abc"], "model.clip_x0", "true or false"),
        ("train", [d, "model.conditional=abc"], "model.conditional", "true or false"),
        ("train", [d, "model.test_bpd_images=-1"], "model.test_bpd_images", ">= 0"),
        ("train", [d, "model.preview_every_n_epochs=-1"], "model.preview_every_n_epochs", ">="),
        ("train", [d, "model.optimizer.lr=-1"], "model.optimizer.lr", "> 0"),
    ]
    return rows


TRAINER = [
    ("trainer.precision=fp7", "trainer.precision", "32-true"),
    ("trainer.precision=17", "trainer.precision", "bf16-mixed"),
    ("trainer.devices=-3", "trainer.devices", "positive"),
    ("trainer.devices=0", "trainer.devices", "positive"),
    ("trainer.devices=abc", "trainer.devices", "auto"),
    ("trainer.max_epochs=abc", "trainer.max_epochs", ">= 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs", ">= 1"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs", ">= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches", ">= 1"),
    ("trainer.accumulate_grad_batches=-2", "trainer.accumulate_grad_batches", ">= 1"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val", "null"),
    ("trainer.gradient_clip_val=abc", "trainer.gradient_clip_val", "> 0"),
    ("trainer.gradient_clip_algorithm=bogus", "trainer.gradient_clip_algorithm", "norm"),
    ("trainer.strategy=bogus", "trainer.strategy", "ddp"),
    ("trainer.strategy=ddpp", "trainer.strategy", "ddp_spawn"),
    ("trainer.accelerator=tpu", "trainer.accelerator", "cpu"),
    ("trainer.accelerator=mps", "trainer.accelerator", "cpu"),
    ("trainer.accelerator=bogus", "trainer.accelerator", "cpu"),
    ("trainer.num_nodes=0", "trainer.num_nodes", ">= 1"),
    ("trainer.max_steps=-5", "trainer.max_steps", "-1"),
    ("trainer.min_epochs=-1", "trainer.min_epochs", ">= 0"),
    ("trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch", ">= 1"),
    ("trainer.val_check_interval=1.5", "trainer.val_check_interval", "(0, 1]"),
    ("trainer.val_check_interval=-1", "trainer.val_check_interval", ">= 1"),
    ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps", ">= 0"),
    ("trainer.limit_train_batches=-1", "trainer.limit_train_batches", "[0, 1]"),
    ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches", "[0, 1]"),
    ("trainer.limit_test_batches=abc", "trainer.limit_test_batches", "count"),
    ("trainer.num_sanity_val_steps=-2", "trainer.num_sanity_val_steps", "-1"),
    ("trainer.deterministic=maybe", "trainer.deterministic", "warn"),
    ("trainer.benchmark=abc", "trainer.benchmark", "true or false"),
    ("trainer.enable_progress_bar=abc", "trainer.enable_progress_bar", "true or false"),
    ("+trainer.bogus_key=1", "trainer.bogus_key", "Drop"),
    ("+trainer.max_epoch=3", "trainer.max_epoch", "Drop"),
    ("trainer.max_epoch=3", "trainer.max_epoch", "max_epochs"),
    ("trainer=tpu", "trainer=tpu", "cpu"),
]
DATA = [
    ("data.batch_size=0", "data.batch_size", ">= 1"),
    ("data.batch_size=abc", "data.batch_size", ">= 1"),
    ("data.batch_size=-5", "data.batch_size", ">= 1"),
    ("data.batch_size=1.5", "data.batch_size", ">= 1"),
    ("data.eval_batch_size=0", "data.eval_batch_size", ">= 1"),
    ("data.val_fraction=1.5", "data.val_fraction", "[0, 1)"),
    ("data.val_fraction=-0.1", "data.val_fraction", "[0, 1)"),
    ("data.split_seed=-1", "data.split_seed", ">= 0"),
    ("data.download=maybe", "data.download", "true or false"),
    ("data.on_device=gpu", "data.on_device", "auto"),
    ("data.binarize=bogus", "data.binarize", "dynamic"),
    ("data.hflip=abc", "data.hflip", "true or false"),
    ("data=bogus", "data=bogus", "mnist"),
    ("data=fashion", "data=fashion", "fashion_mnist"),
    ("data.num_workers=2", "data.num_workers", "+data.num_workers"),
    ("data.image_shape=[1,28]", "data.image_shape", "channels"),
    ("data.image_shape=abc", "data.image_shape", "channels"),
]
EVAL = [
    ("eval.kid_subset_size=20000", "eval.kid_subset_size", "eval.num_samples"),
    ("eval.num_samples=1", "eval.num_samples", ">= 2"),
    ("eval.num_samples=-5", "eval.num_samples", ">= 2"),
    ("eval.kid_subset_size=0", "eval.kid_subset_size", ">= 1"),
    ("eval.batch_size=0", "eval.batch_size", ">= 1"),
    ("eval.iwae_k=-1", "iwae_k", ">= 0"),
    ("eval.bound_images=-1", "eval.bound_images", ">= 0"),
    ("eval.sample_quality=abc", "eval.sample_quality", "true or false"),
    ("eval.domain=abc", "eval.domain", "true or false"),
    ("eval.inception_weights=/nonexistent/inception.pth", "eval.inception_weights", "null"),
    ("eval=bogus", "eval=bogus", "paper"),
]
TOP = [
    ("logger=bogus", "logger=bogus", "wandb"),
    ("logger=wandb logger.wandb.mode=bogus", "logger.wandb.mode", "offline"),
    ("logger=[csv,bogus]", "bogus", "tensorboard"),
    ("logger.wandb.mode=bogus", "logger.wandb.mode", None),  # logger=wandb not chosen
    ("seed=-1", "seed", "2**32"),
    ("seed=abc", "seed", "integer"),
    ("seed=1.5", "seed", "integer"),
    ("seed=4294967296", "seed", "2**32"),
    ("test=maybe", "test", "true or false"),
    ("save_images=abc", "save_images", "true or false"),
    ("speed.compile=abc", "speed.compile", "true or false"),
    ("speed.channels_last=abc", "speed.channels_last", "true or false"),
    ("speed.channels_last=true", "speed.channels_last", "model.arch=conv"),
    ("bogus_key=1", "bogus_key", "+bogus_key"),
    ("model=vea", "model=vea", "vae"),
    ("experiment=bogus", "experiment=bogus", "seed_vae_mnist"),
    ("ckpt_path=/nonexistent/last.ckpt", "/nonexistent/last.ckpt", "run dir"),
    ("ckpt_path={emptydir}", "{emptydir}", "run dir"),
    ("ckpt_path={empty}", "{empty}", "empty"),
    ("ckpt_path={random}", "{random}", "run dir"),
    ("ckpt_path={pickle_noise}", "{pickle_noise}", "none of its code ran"),
    ("ckpt_path={text}", "{text}", "run dir"),
    ("ckpt_path={zip}", "{zip}", "data.pkl"),
    ("ckpt_path={pickled}", "{pickled}", "none of its code ran"),
    ("ckpt_path={rundir}", "{rundir}", "run dir"),
    ("ckpt_path=123", "ckpt_path", "run dir"),
    ("ckpt_path=runs/x/epoch=004-step=2110.ckpt", "ckpt_path", "quote"),
    ("ckpt_path=a=b.ckpt", "ckpt_path", '"a=b.ckpt"'),
    ("model.mlp.hidden=[64", "model.mlp.hidden", "balanced"),
    ("tags=[a,b", "tags", "balanced"),
    ("model.beta='abc", "model.beta", "quote"),
    ('model.beta="abc', "model.beta", "quote"),
    ("model.beta=1)", "model.beta", "quote"),
    ("model.beta", "model.beta", "key=value"),
    ("=1", "=1", "key=value"),
]
SAMPLE_ROWS = [
    # (run=, argv, named, fix); {vae} and {ddpm} are untrained runs of `files`
    (None, ["task=samples"], "run=", "run dir"),
    ("/nonexistent/run", [], "/nonexistent/run", "run dir"),
    ("{empty}", [], "{empty}", None),
    ("{random}", [], "{random}", None),
    ("{pickle_noise}", [], "{pickle_noise}", "none of its code ran"),
    ("{text}", [], "{text}", None),
    ("{zip}", [], "{zip}", None),
    ("{pickled}", [], "{pickled}", "none of its code ran"),
    ("{emptydir}", [], "{emptydir}", "run dir"),
    ("{emptydir}/epoch=1-step=2.ckpt", [], "epoch=1-step=2.ckpt", None),
    ("{vae}", ["n=0"], "n=0", ">= 1"),
    ("{vae}", ["n=-1"], "n=-1", ">= 1"),
    ("{vae}", ["n=abc"], "n=", ">= 1"),
    ("{vae}", ["n=1.5"], "n=1.5", ">= 1"),
    ("{vae}", ["n=1000000000000"], "n=1000000000000", "smaller n"),
    ("{vae}", ["task=reconstructions", "n=1000000"], "n=1000000", "smaller n"),
    ("{vae}", ["task=bogus"], "task=", "samples"),
    ("{vae}", ["task=denoise"], "task=denoise", "ddpm"),
    ("{vae}", ["task=manifold"], "manifold", "latent"),
    ("{vae}", ["steps=5"], "steps=5", "drop"),
    ("{vae}", ["sampler=ddim"], "sampler=ddim", "drop"),
    ("{vae}", ["mode=bogus"], "mode=", "slerp"),
    ("{vae}", ["frames=1"], "frames=1", ">= 2"),
    ("{vae}", ["frames=abc"], "frames=", ">= 2"),
    ("{vae}", ["seed=-1"], "seed=-1", ">= 0"),
    ("{vae}", ["seed=abc"], "seed=", ">= 0"),
    ("{vae}", ["batch_size=0"], "batch_size=0", ">= 1"),
    ("{vae}", ["eta=-1"], "eta=-1", "[0, 1]"),
    ("{vae}", ["guidance_scale=-1"], "guidance_scale=-1", "[0, 100]"),
    ("{vae}", ["strip_steps=0"], "strip_steps=0", ">= 1"),
    ("{vae}", ["overwrite=maybe"], "overwrite=", "true or false"),
    ("{vae}", ["traverse_range=0"], "traverse_range=0", "(0, 100]"),
    ("{vae}", ["label=-1"], "label=-1", ">= 0"),
    ("{vae}", ["task=classes"], "cvae", "conditional"),
    ("{vae}", ["max_images=1"], "max_images=1", ">= 2"),
    ("{vae}", ["device=tpu"], "device=", "cpu"),
    ("{vae}", ["bogus=1"], "bogus", None),
    ("{vae}", ["n=[1"], "n", "balanced"),
    ("{vae}", ["label='x"], "label", "quote"),
    ("{vae}", ["data=mnist"], "data", None),
    ("{ddpm}", ["steps=0"], "steps=0", ">= 1"),
    ("{ddpm}", ["steps=1000"], "steps=1000", "T=50"),
    ("{ddpm}", ["sampler=bogus"], "sampler=", "ddim"),
    ("{ddpm}", ["eta=-1"], "eta=-1", "[0, 1]"),
    ("{ddpm}", ["guidance_scale=2"], "guidance_scale=2", "conditional=true"),
    ("{ddpm}", ["label=1"], "label=1", "conditional=true"),
    ("{ddpm}", ["task=reconstructions"], "task=reconstructions", "denoise"),
    ("{ddpm}", ["task=classes"], "class", "conditional=true"),
    ("{ddpm}", ["n=1000000000000"], "n=1000000000000", "smaller n"),
    ("{ddpm}", ["mode=bogus"], "mode=", "slerp"),
]
SWEEP = [
    (["model.beta=1,-1"], "model.beta", "model.beta=-1"),
    (["trainer.precision=32-true,fp7"], "trainer.precision", "32-true"),
    ([f"model.latent_dim=4,{HUGE}"], "model.latent_dim", "smaller"),
    (["eval.kid_subset_size=10,20000"], "eval.kid_subset_size", "eval.num_samples"),
    (["eval.num_samples=100,64", "eval.kid_subset_size=80"], "eval.kid_subset_size", None),
    (["trainer.strategy=auto,bogus"], "trainer.strategy", "ddp"),
    (["data.batch_size=32,0"], "data.batch_size", ">= 1"),
    (["seed=0,-1"], "seed", "2**32"),
    (["model.optimizer.lr=1e-3,0"], "model.optimizer.lr", "> 0"),
    (["+trainer.bogus=1,2"], "trainer.bogus", "Drop"),
    (["model.mlp.hidden=[64],[0]"], "model.mlp.hidden", "positive"),
    (["trainer.accelerator=cpu,tpu"], "trainer.accelerator", "cpu"),
    (["model.beta=range(5,1)"], "model.beta", "at least one value"),
    (["model.beta=1,[2"], "model.beta", "balanced"),
    (["ckpt_path=a=b.ckpt,c"], "ckpt_path", "quote"),
    (["logger=csv,bogus"], "logger=bogus", "wandb"),
    (["eval.num_samples=1,64"], "eval.num_samples", ">= 2"),
    (["model=ddpm", "model.timesteps=0,10"], "model.timesteps", None),
    (["trainer.max_epochs=abc,1"], "trainer.max_epochs", ">= 1"),
    (["data.val_fraction=0.1,1.5"], "data.val_fraction", "[0, 1)"),
    (["+model.bogus=1,2"], "model.bogus", "Drop"),
    (["trainer.devices=1,-3"], "trainer.devices", "positive"),
    (["model.optimizer._target_=torch.optim.Adam,torch.optim.Bogus"], "_target_", "torch.optim"),
    (["ckpt_path={empty},{text}"], "{empty}", "empty"),
    (["ckpt_path=null,/nonexistent/x.ckpt"], "/nonexistent/x.ckpt", "run dir"),
    (["trainer.gradient_clip_val=1,-1"], "trainer.gradient_clip_val", "null"),
    (["logger=wandb", "logger.wandb.mode=offline,bogus"], "logger.wandb.mode", "offline"),
    (["model.beta=1,2", "optimize_metric=val/bogus"], "optimize_metric", "val/elbo"),
    (["model.beta=1,2", "model.bogus=1"], "model.bogus", "+model.bogus"),
    (["hydra/launcher=bogus", "model.beta=1,2"], "hydra/launcher=bogus", "local_parallel"),
]

CASES = (
    _models()
    + [("train", argv.split(" "), named, fix) for argv, named, fix in TRAINER + DATA + EVAL + TOP]
    + [
        ("sample", [f"run={run}"] * bool(run) + argv, named, fix)
        for run, argv, named, fix in SAMPLE_ROWS
    ]
    + [("sweep", argv, named, fix) for argv, named, fix in SWEEP]
)


def _case_id(case) -> str:
    entry, argv, *_ = case
    return f"{entry}:{' '.join(argv)}"[:90]


# -- files and runs the rows name -----------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/genlab-bad-inputs-pwned",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    (root / "emptydir").mkdir()
    (root / "empty.ckpt").write_bytes(b"")
    # Random bytes (seeded: the same file every run), and a second file that starts like a
    # legacy torch pickle (0x80 PROTO) followed by garbage, which only torch.load can reject.
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (root / "random.ckpt").write_bytes(b"\x00" + noise)
    (root / "pickle_noise.ckpt").write_bytes(b"\x80\x02" + noise)
    (root / "text.ckpt").write_text("not a checkpoint\n")
    with zipfile.ZipFile(root / "zip.ckpt", "w") as archive:
        archive.writestr("notes.txt", "a zip, not torch's")
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode()}}, root / "pickled.ckpt")
    (root / "rundir" / "checkpoints").mkdir(parents=True)
    (root / "rundir" / "checkpoints" / "last.ckpt").write_text("{}")
    found = {p.stem: str(p) for p in root.iterdir()}
    return {**found, "vae": _fake_run(root / "vae", "model=vae", "model.latent_dim=4"),
            "ddpm": _fake_run(root / "ddpm", "model=ddpm", "model.timesteps=50",
                              "model.sample_steps=10", "model.unet.base_channels=8",
                              "model.unet.channel_mults=[1,2]")}  # fmt: skip


def _fake_run(run_dir: Path, *overrides: str) -> str:
    """A run dir as train.py leaves it (config.yaml, a checkpoint), with untrained weights: the
    rows only need a model to refuse options for."""
    from genlab.builders import build_model

    cfg = compose("train", [f"paths.output_dir={run_dir}", *overrides])
    model = build_model(cfg)
    (run_dir / "checkpoints").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    hparams = OmegaConf.to_container(OmegaConf.create(dict(model.hparams)))
    state = {"hyper_parameters": hparams, "state_dict": model.state_dict(), "global_step": 1}
    torch.save(state, run_dir / "checkpoints" / "last.ckpt")
    return str(run_dir)


def _fill(text: str, files: dict[str, str]) -> str:
    return text.format(**files) if "{" in text and "}" in text else text


# -- the entry: argv -> (exit code, what was printed) ---------------------------------------------
def exit_of(entry: str, argv: list[str], capsys, tmp_path, data_root) -> tuple[int, str]:
    from genlab.cli import start
    from genlab.commands import _sample, _single_run_task

    def hydra_main() -> None:  # a plain run is genlab.cli.run_once's, a sweep is refused first
        raise AssertionError("Hydra's main started: its precheck let a bad command through")

    with pytest.raises(SystemExit) as exited, _outside_the_modules_hydra():
        if entry == "sample":
            args = [f"out_dir={tmp_path}", *SAMPLE.quote_paths(argv)]
            start(hydra_main, _sample, args, "sample")
        else:
            paths = [f"paths.data_dir={data_root}", f"hydra.run.dir={tmp_path / 'run'}"]
            args = ["-m", *argv] if entry == "sweep" else [*paths, *argv]
            start(hydra_main, _single_run_task, args, "train")
    printed = capsys.readouterr()
    return exited.value.code, printed.out + printed.err


@contextlib.contextmanager
def _outside_the_modules_hydra():
    """The command starts a Hydra of its own (genlab.cli.run_once), as `python train.py` does:
    the module's is set aside meanwhile."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().clear()
        GlobalHydra.instance().initialize(hydra)


@pytest.fixture(scope="module", autouse=True)
def _hydra_once():
    # One Hydra for the module (genlab.composition.hydra_context reuses an initialised one, as
    # inside a script): each row then composes without setting Hydra up again.
    from hydra import initialize_config_dir

    from genlab.composition import CONF_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        yield


@pytest.fixture(autouse=True)
def _never_train(monkeypatch):
    # A row that got through would train: fail it at once instead.
    def refuse(*args, **kwargs):
        raise AssertionError("training started: the bad input was not refused")

    monkeypatch.setattr("genlab.training.fit_and_test", refuse)


def _assert_refused(code, text: str, named: str, fix: str | None) -> None:
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    error = text[text.index("genlab: error: ") :].strip()
    assert "\n\n" not in error and len(error) < 1500, error  # one paragraph
    assert named in error, error
    if fix is not None:
        assert fix.lower() in error.lower(), error


@pytest.mark.parametrize(("entry", "argv", "named", "fix"), CASES, ids=map(_case_id, CASES))
def test_bad_input_exits_2_naming_the_key(
    entry, argv, named, fix, files, capsys, tmp_path, data_root
):
    argv = [_fill(a, files) for a in argv]
    code, text = exit_of(entry, argv, capsys, tmp_path, data_root)
    _assert_refused(code, text, _fill(named, files), fix)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written, no run dir
    assert not Path("/tmp/genlab-bad-inputs-pwned").exists()


def test_the_table_is_large():
    entries = {e: sum(c[0] == e for c in CASES) for e in ("train", "sample", "sweep")}
    assert len(CASES) >= 150 and min(entries.values()) >= 25, entries


def test_lightnings_names_are_genlabs():
    """genlab.run_rules copies Lightning's strategy, accelerator and Trainer argument names (to
    check them without importing Lightning); they must stay Lightning's."""
    import inspect

    from lightning.pytorch import Trainer
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from genlab.run_rules import ACCELERATORS, STRATEGIES, TRAINER_KEYS

    assert set(STRATEGIES) == {"auto", *StrategyRegistry.available_strategies()}
    assert set(ACCELERATORS) == {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}
    assert set(TRAINER_KEYS) == {"_target_", *inspect.signature(Trainer.__init__).parameters} - {
        "self"
    }


# -- end to end: real processes -------------------------------------------------------------------
END_TO_END = [
    ("train.py", ["trainer.strategy=bogus"], "trainer.strategy"),
    ("train.py", ["ckpt_path=runs/x/epoch=004-step=2110.ckpt"], "ckpt_path"),
    ("train.py", [f"model.latent_dim={HUGE}"], "model.latent_dim"),
    ("train.py", ["-m", "model.beta=1,-1"], "model.beta"),
    ("sample.py", ["run={text}"], "{text}"),
]


@pytest.fixture(scope="module")
def processes(files, tmp_path_factory):
    """The END_TO_END command lines, started together (each spends seconds importing)."""
    out = tmp_path_factory.mktemp("out")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = [
        subprocess.Popen(
            [sys.executable, str(REPO / script), *[_fill(a, files) for a in argv]]
            + ([f"paths.output_root={out}"] if script == "train.py" else []),
            cwd=out,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, argv, _ in END_TO_END
    ]
    results = [p.communicate(timeout=180) + (p.returncode,) for p in started]
    return results, out


@pytest.mark.parametrize("index", range(len(END_TO_END)), ids=[" ".join(c[1]) for c in END_TO_END])
def test_end_to_end(processes, files, index):
    results, out = processes
    stdout, stderr, code = results[index]
    _assert_refused(code, stdout + stderr, _fill(END_TO_END[index][2], files), None)
    assert not (out / "runs").exists() and not (out / "multirun").exists()


# -- secrets: every secret-named variable is masked, however short --------------------------------
@pytest.mark.parametrize("name", ["WANDB_API_KEY", "MY_TOKEN", "APP_SECRET", "DB_PASSWORD_X"])
@pytest.mark.parametrize("value", ["x", "ab", "q7z"])
def test_short_secrets_are_masked(monkeypatch, tmp_path, name, value):
    from genlab.secrets import MASK, masked_argv, redact, redact_files, secret_values

    monkeypatch.setenv(name, value)
    assert value in secret_values()
    record = redact({"notes": value, "tags": [value, "other"], "o": [f"+notes={value}"]})
    assert record == {"notes": MASK, "tags": [MASK, "other"], "o": [f"+notes={MASK}"]}
    # Never inside other words or paths: those would be garbled, not protected.
    assert redact({"path": f"/runs/{value}x/{value}.ckpt"}) == {
        "path": f"/runs/{value}x/{value}.ckpt"
    }
    hydra_file = tmp_path / "overrides.yaml"
    hydra_file.write_text(f"- +notes={value}\n- tags=[{value},b]\nnotes: '{value}'\n")
    redact_files([hydra_file])
    text = hydra_file.read_text()
    assert text == f"- +notes={MASK}\n- tags=[{MASK},b]\nnotes: '{MASK}'\n"
    monkeypatch.setattr(sys, "argv", ["train.py", f"+notes={value}"])
    with masked_argv():
        assert sys.argv == ["train.py", f"+notes={MASK}"]


# -- divergence: the suggestions never repeat the run's own settings -----------------------------
def _diverge(precision: str, clip, lr=1e-3) -> str:
    from genlab.callbacks import DivergenceGuard, TrainingDiverged

    trainer = SimpleNamespace(
        precision=precision, gradient_clip_val=clip, current_epoch=0, global_step=3, callbacks=[]
    )
    module = SimpleNamespace(hparams={"optimizer": {"lr": lr}, "beta": 1.0})
    with pytest.raises(TrainingDiverged) as err:
        DivergenceGuard().on_train_batch_end(
            trainer, module, {"loss": torch.tensor(math.nan)}, None, 0
        )
    return str(err.value)


def test_divergence_message_never_suggests_what_the_run_has():
    full = _diverge("32-true", 1.0)
    assert "trainer.precision" not in full and "gradient_clip_val" not in full
    assert "model.optimizer.lr=0.001 (try 3-10x smaller)" in full
    assert "trainer.precision=64-true" not in _diverge("64-true", 0.5)
    half = _diverge("bf16-mixed", None)
    assert "trainer.precision=bf16-mixed (try 32-true)" in half
    assert "trainer.gradient_clip_val=null (try 1.0)" in half


def test_any_bytes_after_a_pickle_header_give_one_message(tmp_path):
    """A file that starts like torch's legacy pickle format passes the header check, so torch's
    own unpickler meets whatever follows; every kind of error it raises on garbage (IndexError,
    KeyError, ValueError, UnpicklingError, ...) must come out as the one GenlabError naming the
    file. (Unseeded random bytes made this test module flaky before.)"""
    from genlab import GenlabError
    from genlab.checkpoints import load_checkpoint

    rng = np.random.default_rng(1)
    for i in range(64):
        path = tmp_path / f"noise{i}.ckpt"
        path.write_bytes(b"\x80" + rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
        with pytest.raises(GenlabError, match=f"noise{i}.ckpt"):
            load_checkpoint(path)
