"""One sampler rule on every path: sample.py, genlab.load(...).sample, the test stage and
evaluate= draw with the sampler asked for -- the images of a direct run of that sampler (the
registry's class in genlab.diffusion's loop) from the same seed -- and refuse the same options
with the same words (genlab.sampler_rules.plan_sampling). The torch-free sampler table is the
registry's, checked against what each class does, and the help texts list every sampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures import REPO, TINY_DDPM, compose_run
from PIL import Image

import genlab
from genlab import GenlabError
from genlab.diffusion import SAMPLERS, DiffusionSchedule, make_sampler, sample_loop
from genlab.models import MODEL_CLASSES
from genlab.runs import load_run
from genlab.sample import run as sample_run
from genlab.sampler_rules import MODEL_SAMPLER, SAMPLER_RULES
from genlab.training import run as train

T, STEPS, SIDE, PAD = 50, 10, 28, 2  # TINY_DDPM's T and sample_steps; the PNG grid's geometry
# A test stage that scores 12 samples in batches of 5 (5, 5, 2) and skips the T-call bound.
EVAL = ["eval.num_samples=12", "eval.kid_subset_size=6", "eval.batch_size=5"]
EVAL += ["eval.bound_images=0", "save_images=false"]
# v-prediction: after one epoch an eps-model's clipped samples are nearly all 0 or 1 whatever
# the deterministic sampler, and the samplers could not be told apart by their images.
RUN = [*TINY_DDPM, "model.prediction=v", "data=mnist", "model.ema_decay=0.9", *EVAL]
OWN = "dpmpp_2m"  # the trained run's model.sampler


def direct(model, name: str, n: int, generator, x_T=None, steps=STEPS) -> torch.Tensor:
    """Images in [0, 1]: the sampler `name` of the registry in the one loop, on the model's
    network, with `steps` steps (all T for a sampler that visits every step)."""
    steps = T if SAMPLER_RULES[name].all_steps else steps
    sampler = make_sampler(
        name,
        model.schedule,
        steps,
        prediction=model.prediction,
        clip_x0=model.clip_x0,
        variance=model.variance,
        eta=0.0,
    )
    shape = None if x_T is not None else (n, *model.noise_shape)
    x = sample_loop(sampler, model.net, shape, x_T=x_T, generator=generator, device=model.device)
    return (x + 1) / 2


def _spy_on_quality_samples(monkeypatch, draws: list) -> None:
    """Record each test stage's FID samples with, computed on the weights in use at that
    moment (EMA's), what every sampler draws from SampleQuality's seed and batches."""
    from genlab.metrics.quality import SampleQuality

    original = SampleQuality._generate

    def spy(self, pl_module, n, seed):
        out = original(self, pl_module, n, seed)
        expected = {}
        for name in SAMPLER_RULES:
            generator = torch.Generator(device=pl_module.device).manual_seed(10_000 + seed)
            sizes = [min(self.batch_size, n - s) for s in range(0, n, self.batch_size)]
            expected[name] = torch.cat([direct(pl_module, name, k, generator) for k in sizes])
        draws.append((out, expected))
        return out

    monkeypatch.setattr(SampleQuality, "_generate", spy)


def _domain_classifier(monkeypatch, path) -> None:
    from genlab.metrics import classifier

    monkeypatch.setattr(classifier, "cache_path", lambda data_dir, dataset: path)


def _assert_drawn_by(draws: list, name: str) -> None:
    [(out, expected)] = draws
    others = [other for other in SAMPLER_RULES if other != name]
    torch.testing.assert_close(out, expected[name].cpu(), rtol=0, atol=1e-5)
    assert all(not torch.allclose(out, expected[o].cpu(), atol=1e-3) for o in others)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A tiny DDPM trained with model.sampler=dpmpp_2m and its test stage (FID samples
    recorded); the domain classifier trained once, in this module's own folder."""
    from genlab.data import ImageDataModule
    from genlab.metrics.classifier import train_classifier

    root = tmp_path_factory.mktemp("sampler_paths")
    dm = ImageDataModule.from_name("mnist", data_root, download=False, system_dirs=[])
    classifier, _ = train_classifier("mnist", data_root, epochs=1, out=root / "c.pt", datamodule=dm)
    draws: list = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        _domain_classifier(monkeypatch, classifier)
        _spy_on_quality_samples(monkeypatch, draws)
        metrics = train(compose_run(data_root, root / "run", *RUN, f"model.sampler={OWN}"))
    assert "test/fid_domain" in metrics
    return {"run_dir": root / "run", "draws": draws, "classifier": classifier}


@pytest.fixture(scope="module")
def model(trained):
    return load_run(trained["run_dir"], MODEL_CLASSES, "cpu").model


# -- the test stage and evaluate= ----------------------------------------------------------------
def test_the_test_stage_draws_with_model_sampler(trained):
    _assert_drawn_by(trained["draws"], OWN)


@pytest.mark.parametrize(
    ("override", "name"),
    [("model.sampler=null", "ddim"), ("model.sampler=ddpm", "ddpm")],  # null: the default rule
)
def test_evaluate_draws_with_the_sampler_asked(
    trained, data_root, tmp_path, monkeypatch, override, name
):
    # sample_steps=10 < T: a run trained with default settings keeps drawing its FID samples
    # with DDIM, as before model.sampler existed.
    draws: list = []
    _domain_classifier(monkeypatch, trained["classifier"])
    _spy_on_quality_samples(monkeypatch, draws)
    scored = train(
        compose_run(data_root, tmp_path / "eval", *RUN, override, f"evaluate={trained['run_dir']}")
    )
    assert "test/fid_domain" in scored
    _assert_drawn_by(draws, name)


def test_a_bad_model_sampler_is_refused_by_its_key(compose, data_root, tmp_path):
    from genlab.run_rules import validate_run_config

    with pytest.raises(GenlabError, match=r"model\.sampler='euler'.*one of ddpm, ddim, dpmpp_2m"):
        validate_run_config(compose(*RUN, "model.sampler=euler"))
    with pytest.raises(GenlabError, match=r"model\.eta=0\.5.*model\.sampler=dpmpp_2m.*no eta"):
        validate_run_config(compose(*RUN, "model.sampler=dpmpp_2m", "model.eta=0.5"))
    argv = ["model=ddpm", "model.sampler=euler", f"paths.data_dir={data_root}"]
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "model.sampler='euler'" in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_a_checkpoint_naming_no_sampler_is_refused(trained, tmp_path):
    # A checkpoint's hyperparameters are data: model.sampler must be a name of the table.
    (best,) = (trained["run_dir"] / "checkpoints").glob("epoch=*.ckpt")
    state = torch.load(best, weights_only=True)
    state["hyper_parameters"]["sampler"] = "os.system"
    forged = tmp_path / "forged.ckpt"
    torch.save(state, forged)
    with pytest.raises(GenlabError, match=r"sampler='os\.system'.*one of ddpm, ddim, dpmpp_2m"):
        genlab.load(forged)


# -- sample.py and genlab.load -------------------------------------------------------------------
def _tiles(path, count: int) -> torch.Tensor:
    """The first `count` images (row by row) of a one-row-high-or-more grid PNG, in [0, 1]."""
    with Image.open(path) as image:
        grid = torch.from_numpy(np.asarray(image.convert("L")).copy()).float() / 255
    cols = (grid.shape[1] - PAD) // (SIDE + PAD)
    out = []
    for i in range(count):
        top, left = PAD + (i // cols) * (SIDE + PAD), PAD + (i % cols) * (SIDE + PAD)
        out.append(grid[top : top + SIDE, left : left + SIDE])
    return torch.stack(out).unsqueeze(1)


@pytest.mark.parametrize(("asked", "name"), [(s, s) for s in SAMPLER_RULES] + [(None, OWN)])
def test_sample_py_draws_with_the_sampler_asked(trained, model, tmp_path, asked, name):
    options = {} if asked is None else {"sampler": asked}
    [path] = sample_run(
        {"run": str(trained["run_dir"]), "task": "samples", "n": 2, "seed": 4, "device": "cpu",
         "out_dir": str(tmp_path), **options}
    )  # fmt: skip
    expected = direct(model, name, 4, torch.Generator().manual_seed(4))
    drawn = _tiles(path, 4)
    assert (drawn - expected).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNG
    others = [direct(model, o, 4, torch.Generator().manual_seed(4)) for o in SAMPLER_RULES]
    assert sum(bool((drawn - o).abs().max() <= 1 / 255 + 1e-6) for o in others) == 1


@pytest.mark.parametrize(
    ("asked", "name"), [("dpmpp_2m", "dpmpp_2m"), ("ddim", "ddim"), (None, OWN)]
)
def test_interpolate_maps_the_ends_with_the_deterministic_sampler_asked(
    trained, model, tmp_path, asked, name
):
    n, seed = 2, 3
    options = {} if asked is None else {"sampler": asked}
    [path] = sample_run(
        {"run": str(trained["run_dir"]), "task": "interpolate", "n": n, "frames": 3,
         "seed": seed, "device": "cpu", "out_dir": str(tmp_path), **options}
    )  # fmt: skip
    draws = torch.randn(2 * n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    first_column = _tiles(path, 3 * n)[0::3]
    expected = direct(model, name, n, None, x_T=draws[0::2])
    assert (first_column - expected).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize(("asked", "name"), [(s, s) for s in SAMPLER_RULES] + [(None, OWN)])
def test_the_api_draws_with_the_sampler_asked(trained, asked, name):
    pipe = genlab.load(trained["run_dir"])
    drawn = pipe.sample(3, seed=7, sampler=asked)
    expected = direct(pipe.model, name, 3, torch.Generator().manual_seed(7))
    torch.testing.assert_close(drawn, expected, rtol=0, atol=1e-6)


def test_an_export_and_the_previews_draw_with_model_sampler(trained, model, tmp_path):
    from genlab.export import export_run

    pipe = genlab.load(export_run(trained["run_dir"], tmp_path / "export"))
    expected = direct(pipe.model, OWN, 3, torch.Generator().manual_seed(7))
    torch.testing.assert_close(pipe.sample(3, seed=7), expected, rtol=0, atol=1e-6)
    # previews: model.sampler over preview_steps, from seed 0
    steps = min(model.spec.preview_steps, T)
    preview = model.preview_images(torch.zeros(3, 1, SIDE, SIDE), None)["samples"]
    expected = direct(model, OWN, 3, torch.Generator().manual_seed(0), steps=steps)
    torch.testing.assert_close(preview, expected, rtol=0, atol=1e-6)


REFUSED = [
    ("ancestral_steps", {"sampler": "ddpm", "steps": 5}, "sampler=ddpm is ancestral sampling: "
     "it takes all T=50 steps, so steps=5 does not apply"),
    ("ancestral_eta", {"sampler": "ddpm", "eta": 0.5}, r"eta=0\.5 sets the noise of DDIM steps, "
     r"but this is ancestral sampling \(sampler=ddpm\), which has no eta"),
    ("dpm_eta", {"sampler": "dpmpp_2m", "eta": 0.5}, r"but this is DPM-Solver\+\+\(2M\) "
     r"\(sampler=dpmpp_2m\), which has no eta: use sampler=ddim"),
    ("own_sampler_eta", {"eta": 0.5}, r"model\.sampler=dpmpp_2m \(this DDPM's own sampler\)"),
    ("unknown", {"sampler": "euler"}, "Invalid option: sampler='euler'. sampler must be one of "
     "ddpm, ddim, dpmpp_2m"),
    ("steps_above_T", {"steps": 51}, "steps must be an integer between 1 and this DDPM's T=50"),
    ("guidance", {"guidance_scale": 2.0}, "needs a class-conditional DDPM"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "options", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_sample_py_and_the_api_refuse_with_the_same_words(
    trained, tmp_path, case, options, message
):
    with pytest.raises(GenlabError, match=message) as by_sample_py:
        sample_run(
            {"run": str(trained["run_dir"]), "task": "samples", "device": "cpu",
             "out_dir": str(tmp_path / "out"), **options}
        )  # fmt: skip
    with pytest.raises(GenlabError) as by_api:
        genlab.load(trained["run_dir"]).sample(2, **options)
    assert str(by_api.value) == str(by_sample_py.value)
    assert not (tmp_path / "out").exists()


def test_the_sample_command_refuses_with_those_words_and_exit_code_2(trained):
    with pytest.raises(GenlabError) as by_api:
        genlab.load(trained["run_dir"]).sample(2, sampler="ddpm", steps=5)
    result = subprocess.run(
        [sys.executable, "sample.py", f"run={trained['run_dir']}", "sampler=ddpm", "steps=5"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert " ".join(str(by_api.value).split()) in " ".join(result.stderr.split())


# -- the table, the registry and the help texts --------------------------------------------------
def test_the_sampler_table_is_the_registry_and_says_what_each_class_does():
    assert list(SAMPLER_RULES) == list(SAMPLERS)
    schedule = DiffusionSchedule.from_name("linear", T)
    net = lambda x, t, y: torch.tanh(x) + 0.01 * t.reshape(-1, 1, 1, 1)  # noqa: E731
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for name, cls in SAMPLERS.items():
        rules = cls.rules
        assert rules is SAMPLER_RULES[name] and rules.name == cls.name == name
        assert rules.takes_eta == ("eta" in cls.options)
        sampler = make_sampler(name, schedule, 5)
        assert len(sampler.timesteps()) == (T if rules.all_steps else 5)
        a, b = (
            sample_loop(sampler, net, None, x_T=x_T, generator=torch.Generator().manual_seed(s))
            for s in (1, 2)
        )
        assert torch.equal(a, b) == rules.deterministic, name


def test_the_help_texts_list_every_sampler():
    from genlab.sample.help import help_block, rendered, sampler_comment

    yaml_text = (REPO / "conf" / "sample.yaml").read_text()
    comment = yaml_text[: yaml_text.index("\nsampler: null")].rsplit("\n\n", 1)[1]
    assert comment == sampler_comment()  # the file holds the generated list
    assert rendered()[REPO / "conf" / "sample.yaml"] == yaml_text
    for name, rules in SAMPLER_RULES.items():
        assert f"#   {name}" in comment and rules.about in comment
        assert name in MODEL_SAMPLER.accepted
    assert " | ".join(SAMPLER_RULES) in help_block()
    result = subprocess.run(
        [sys.executable, "sample.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and " | ".join(SAMPLER_RULES) in result.stdout
