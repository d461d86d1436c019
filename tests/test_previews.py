"""Preview grids as files after every validation epoch (<run>/previews/epoch=NNN-<name>.png),
with any logger: the bytes sent to the loggers, and only the newest `previews.keep` epochs."""

import numpy as np
import pytest
from PIL import Image

import genlab.models.base as base
from genlab.training import run

SMALL = ["model.mlp.hidden=[32]", "model.latent_dim=2", "model.iwae_k_val=0", "test=false"]
SMALL += ["save_images=false", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.fixture
def sent(monkeypatch):
    """(epoch, name) -> the uint8 pixels genlab's log_images returned (what loggers get)."""
    grids = {}
    real = base.log_images

    def spy(loggers, key, images, step, nrow=None):
        pixels = real(loggers, key, images, step, nrow)
        grids[(spy.module.trainer.current_epoch, key.split("/")[-1])] = pixels.clone()
        return pixels

    monkeypatch.setattr(base, "log_images", spy)
    monkeypatch.setattr(
        base.GenerativeModule,
        "on_validation_start",
        lambda m: setattr(spy, "module", m),
        raising=False,
    )
    return grids


def test_preview_files_hold_the_logged_pixels_and_keep_the_newest(compose, tmp_path, sent):
    run(compose(*SMALL, "trainer.max_epochs=4", "previews.keep=2"))
    folder = tmp_path / "run" / "previews"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        f"epoch={e:03d}-{n}.png" for e in (2, 3) for n in ("reconstructions", "samples")
    ]
    assert sorted(sent) == [(e, n) for e in range(4) for n in ("reconstructions", "samples")]
    for name in names:
        epoch, kind = int(name[6:9]), name[10:-4]
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        assert np.array_equal(pixels, sent[(epoch, kind)].permute(1, 2, 0).numpy()), name


def test_no_previews_with_keep_zero(compose, tmp_path):
    run(compose(*SMALL, "previews.keep=0"))
    assert not (tmp_path / "run" / "previews").exists()
