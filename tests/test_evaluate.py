"""Evaluating a checkpoint without training (`evaluate=`, genlab.evaluate): the numbers are the
test stage's for the same checkpoint, nothing trains, and a config the checkpoint was not
trained with is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from genlab import GenlabError
from genlab.training import run

# An AE: its test metrics are deterministic (a VAE's draw z, so two evaluations of one
# checkpoint agree only in distribution), so the two numbers must be equal.
TINY = ["data=mnist", "model=ae", "model.mlp.hidden=[32]", "model.latent_dim=4"]
TINY += ["eval.sample_quality=false"]


def test_evaluate_gives_the_test_stage_numbers_of_that_checkpoint(compose, tmp_path):
    trained_dir = tmp_path / "trained"
    metrics = run(compose(*TINY, run_dir=trained_dir))
    (best,) = (trained_dir / "checkpoints").glob("epoch=*.ckpt")
    step = torch.load(best, weights_only=True)["global_step"]

    eval_dir = tmp_path / "eval"
    scored = run(compose(*TINY, "eval.iwae_k=7", f"evaluate={trained_dir}", run_dir=eval_dir))
    tests = {
        k: v
        for k, v in metrics.items()
        if k.startswith("test/") and k not in ("test/nll", "test/bpd")
    }
    assert tests and all(scored[k] == pytest.approx(v, rel=1e-6) for k, v in tests.items())
    assert any(k.startswith("val/") for k in scored)  # the validation stage ran too
    assert json.loads((eval_dir / "metrics.json").read_text()) == pytest.approx(scored)
    assert not (eval_dir / "checkpoints").exists() or not any(
        (eval_dir / "checkpoints").glob("*.ckpt")
    )  # nothing trained, nothing saved
    assert (eval_dir / "reconstructions.png").exists() and step > 0

    # A model the checkpoint is not: refused by the key, before anything is computed.
    with pytest.raises(GenlabError, match="model.latent_dim"):
        run(compose(*TINY[:3], "model.latent_dim=8", f'evaluate="{best}"', run_dir=tmp_path / "x"))
    with pytest.raises(GenlabError, match="Drop one of them"):
        run(compose(*TINY, f'evaluate="{best}"', f'ckpt_path="{best}"', run_dir=tmp_path / "y"))
