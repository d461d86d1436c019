"""Links in a run dir that lead out of it (issue 24): nothing is read through them."""

from __future__ import annotations

import shutil

import pytest
import test_hostile_files as hostile

import genlab
from genlab import GenlabError
from genlab.export import WEIGHTS

# the tiny trained run of tests/test_hostile_files.py, a fresh copy per test
base, prior, scene, _load = hostile.base, hostile.prior, hostile.scene, hostile._load
prior_export = hostile.prior_export


def test_a_checkpoints_folder_linking_out_of_the_run_is_refused(scene, tmp_path):
    """`checkpoints -> /elsewhere/checkpoints`: the checkpoint there is not loaded."""
    elsewhere = tmp_path / "elsewhere" / "checkpoints"
    shutil.move(scene.dir / "checkpoints", elsewhere)
    (scene.dir / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    code, output = _load(scene, None)
    assert code == 2 and "outside" in output and str(scene.dir) in output, output
    scene.assert_harmless(output)


def test_a_link_that_stays_inside_the_run_still_loads(scene):
    """`checkpoints -> kept/` inside the run is the run's own folder: it loads."""
    shutil.move(scene.dir / "checkpoints", scene.dir / "kept")
    (scene.dir / "checkpoints").symlink_to(scene.dir / "kept", target_is_directory=True)
    code, output = _load(scene, None)
    assert code == 0, output


def test_export_weights_linking_out_of_the_export_are_refused(prior_export, tmp_path):
    """`model.safetensors -> /elsewhere/x.safetensors` (same bytes, so its sha256 matches):
    genlab.load reads nothing through the link."""
    folder = shutil.copytree(prior_export, tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(folder / WEIGHTS, elsewhere)
    (folder / WEIGHTS).symlink_to(elsewhere)
    with pytest.raises(GenlabError, match="outside") as err:
        genlab.load(folder)
    assert str(elsewhere) in str(err.value) and f"files.{WEIGHTS}" in str(err.value)


def test_export_weights_linking_inside_the_export_load(prior_export, tmp_path):
    folder = shutil.copytree(prior_export, tmp_path / "copy")
    (folder / "kept").mkdir()
    shutil.move(folder / WEIGHTS, folder / "kept" / WEIGHTS)
    (folder / WEIGHTS).symlink_to(folder / "kept" / WEIGHTS)
    assert genlab.load(folder) is not None


@pytest.mark.parametrize(
    "entry", [hostile._evaluate, hostile._resume], ids=["evaluate=", "ckpt_path="]
)
def test_evaluate_and_resume_refuse_a_checkpoint_linking_out_of_the_run(
    scene, data_root, tmp_path, entry
):
    """`checkpoints/<best>.ckpt -> /elsewhere`: evaluate= and ckpt_path=<run> load nothing
    through it (sample.py and genlab.load refuse it too, above)."""
    for ckpt in (scene.dir / "checkpoints").glob("*.ckpt"):
        elsewhere = tmp_path / "elsewhere" / ckpt.name
        elsewhere.parent.mkdir(exist_ok=True)
        shutil.move(ckpt, elsewhere)
        ckpt.symlink_to(elsewhere)
    code, output = entry(scene, data_root)
    assert code == 2 and "outside" in output and str(scene.dir) in output, output
    scene.assert_harmless(output)


def test_export_reads_no_hydra_record_through_a_link_out_of_the_run(scene, tmp_path):
    """`.hydra -> /elsewhere/hydra`, whose overrides.yaml names another run: the export does not
    publish what it says."""
    from genlab.export import export_run

    elsewhere = tmp_path / "elsewhere" / "hydra"
    elsewhere.mkdir(parents=True)
    (elsewhere / "overrides.yaml").write_text("- name=from-outside-the-run\n")
    shutil.rmtree(scene.dir / ".hydra", ignore_errors=True)  # (the tiny run was composed)
    (scene.dir / ".hydra").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(GenlabError, match="outside"):
        export_run(scene.dir, tmp_path / "export")
    assert not (tmp_path / "export").exists()
