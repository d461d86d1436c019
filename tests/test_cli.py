"""The command line as a user runs it: `python train.py ...` in a subprocess."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures import FAST, REPO


def _train(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bad_value_exits_2_with_one_line(tmp_path):
    result = _train("model.beta=-0.5", f"paths.output_root={tmp_path}")
    assert result.returncode == 2
    assert "genlab: error: Invalid config: model.beta=-0.5" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_group_option_lists_choices(tmp_path):
    result = _train("model=vea", f"paths.output_root={tmp_path}")
    assert result.returncode == 2
    choices = "ae, cvae, ddpm, latent_ddpm, vae, vqvae"
    assert f"Unknown option model=vea. Did you mean 'vae'? Choose one of: {choices}." in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_unknown_key_gets_did_you_mean(tmp_path):
    result = _train("model.betta=1", f"paths.output_root={tmp_path}")
    assert result.returncode == 2
    assert "Unknown config key 'model.betta'. Did you mean 'beta'?" in result.stderr
    assert "+model.betta=" in result.stderr  # how to add a key on purpose


def _last_val_row(run_dir: Path) -> dict:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("val/elbo")][-1]


def test_ddp_two_cpu_processes_train_with_synced_metrics(data_root, tmp_path):
    """trainer=ddp: 2 gloo ranks each take half the data per epoch, and the logged val/elbo is
    the average over the whole val split (checked against a one-process evaluation)."""
    run_dir = tmp_path / "ddp"
    result = _train(
        "trainer=ddp",
        "data=mnist",
        "model.latent_dim=4",
        "model.mlp.hidden=[64]",
        f"paths.data_dir={data_root}",
        f"hydra.run.dir={run_dir}",
        "test=false",
        "save_images=false",
        *FAST,
        "trainer.max_epochs=2",
        timeout=420,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 288 train images, 144 per rank, batch 32 -> 5 steps per epoch per rank
    assert ckpt["global_step"] == 2 * 5

    from omegaconf import OmegaConf

    from genlab.builders import build_datamodule
    from genlab.models import VAE

    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    model.eval()
    dm = build_datamodule(cfg)
    dm.setup("fit")
    images, labels = dm.splits["val"]
    x = images.float() / 255
    recon, kl = [], []
    with torch.no_grad():
        torch.manual_seed(0)
        for _ in range(50):  # the ELBO is stochastic in z: average many draws
            _, terms = model.compute_terms(x, labels)
            recon.append(terms["recon"].mean())
            kl.append(terms["kl"].mean())
    expected_kl = float(torch.stack(kl).mean())
    logged = _last_val_row(run_dir)
    # KL given the encoder is exact per image (no sampling): rank-sharded mean == full mean
    assert float(logged["val/kl"]) == pytest.approx(expected_kl, rel=1e-4)
    assert float(logged["val/recon"]) == pytest.approx(float(torch.stack(recon).mean()), rel=0.02)


def test_ground_floor_composes_without_torch_and_registers_resolvers_once():
    """genlab.composition is what the CLI, the sweep precheck and the data module stand on: it
    imports nothing of genlab but GenlabError, composing pulls in no torch, and registering the
    resolvers twice is harmless."""
    code = (
        "import sys\n"
        "from genlab.composition import compose, register_resolvers\n"
        "print(sorted(m for m in sys.modules if m.startswith('genlab')))\n"
        "register_resolvers(); register_resolvers()\n"
        "cfg = compose('train', ['hydra/launcher=slurm', 'trainer=gpu', 'trainer.devices=2'],"
        " return_hydra_config=True)\n"
        "assert cfg.hydra.launcher.gpus_per_node == 2 and cfg.sweep_job is None\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'lightning'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["['genlab', 'genlab.composition']", "[]"]
