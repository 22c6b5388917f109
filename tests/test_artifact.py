"""The model directory (pipeline.artifact): written, exported, resolved, loaded; set-up keys.

Fast: no Ray start; a Ray ``Checkpoint`` is only wrapped around a local directory.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.artifact import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_INFO,
    CHECKPOINT_TRAIN_STATE,
    CHECKPOINT_WEIGHTS,
    ExtractorSetup,
    export_model,
    load_model,
    model_id,
    read_checkpoint,
    read_checkpoint_info,
    resolve_model_dir,
    write_checkpoint,
)
from pipeline.crif.model import CRIFConfig, build_model
from pipeline.extract.job import parts_directory

REPO = Path(__file__).resolve().parents[1]
CONFIG = CRIFConfig(num_classes=3, visual_dim=16, semantic_dim=8, hidden_dim=8, shared_dim=8, rho=4)
S3D = {
    "dim": 1024,
    "extractor": "s3d",
    "weights": "random",
    "config": {"fps": 8.0, "clip_len": 16, "clip_stride": 16, "size": 224, "weights": "random"},
}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIG).eval()


def info_for(epoch: int = 0) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_config": CONFIG.to_dict(),
        "task": "single_label",
        "class_names": ["a", "b", "c"],
        "modalities": {"visual": S3D},
        "history": [],
        "resumes": 0,
    }


def write_training_checkpoint(directory: Path, seed: int = 0) -> Path:
    model = tiny_model(seed)
    train_state = {"optimizer": {"state": {}, "param_groups": []}, "stage": None}
    return write_checkpoint(directory, model.state_dict(), info_for(), train_state)


class FakeCheckpoint:
    """Anything with ``as_directory()`` (duck typing, as Ray's Checkpoint)."""

    def __init__(self, path: Path):
        self.path = path
        self.opened = 0

    def as_directory(self):
        import contextlib

        self.opened += 1
        return contextlib.nullcontext(str(self.path))


def test_written_model_loads_with_its_info_and_outputs(tmp_path):
    model = tiny_model()
    directory = write_checkpoint(tmp_path / "model", model.state_dict(), info_for(epoch=4))
    assert sorted(p.name for p in directory.iterdir()) == [CHECKPOINT_INFO, CHECKPOINT_WEIGHTS]
    loaded, info = load_model(directory)
    assert info == info_for(epoch=4) == read_checkpoint_info(directory)
    assert not loaded.training
    visual, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded.predict(visual, mask), model.predict(visual, mask))


def test_training_checkpoint_keeps_its_train_state(tmp_path):
    directory = write_training_checkpoint(tmp_path / "checkpoint_epoch=0000")
    assert (directory / CHECKPOINT_TRAIN_STATE).is_file()
    contents = read_checkpoint(directory, train_state=True)
    assert contents.train_state == {"optimizer": {"state": {}, "param_groups": []}, "stage": None}
    assert read_checkpoint(directory).train_state is None  # not read unless asked for
    assert set(contents.weights) == set(tiny_model().state_dict())


def test_export_copies_weights_and_info_and_replaces_the_target(tmp_path):
    source = write_training_checkpoint(tmp_path / "checkpoint_epoch=0001")
    target = tmp_path / "run" / "model"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("from an earlier export")
    checkpoint = FakeCheckpoint(source)
    assert export_model(checkpoint, target) == target
    assert checkpoint.opened == 1
    assert sorted(p.name for p in target.iterdir()) == [CHECKPOINT_INFO, CHECKPOINT_WEIGHTS]
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no staging left behind
    assert model_id(target) == model_id(source)


def test_a_ray_checkpoint_is_read_through_as_directory(tmp_path):
    from ray.train import Checkpoint

    source = write_training_checkpoint(tmp_path / "checkpoint")
    checkpoint = Checkpoint.from_directory(str(source))
    model, info = load_model(checkpoint)
    assert info["model_config"] == CONFIG.to_dict()
    exported = export_model(checkpoint, tmp_path / "exported")
    assert read_checkpoint_info(exported) == info


def test_resolve_model_dir_finds_run_dir_model_and_tune_best(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run / "model", tiny_model().state_dict(), info_for())
    assert resolve_model_dir(run) == run / "model"
    assert resolve_model_dir(run / "model") == run / "model"
    sweep = tmp_path / "sweep"
    write_checkpoint(sweep / "best" / "model", tiny_model().state_dict(), info_for())
    assert resolve_model_dir(sweep) == sweep / "best" / "model"
    assert load_model(sweep)[1] == info_for()  # load_model resolves a path the same way
    with pytest.raises(FileNotFoundError, match=f"no trained model .*{CHECKPOINT_INFO}"):
        resolve_model_dir(tmp_path / "empty")


def test_model_id_names_the_weights(tmp_path):
    first = write_checkpoint(tmp_path / "a", tiny_model(seed=0).state_dict(), info_for())
    again = write_checkpoint(tmp_path / "b", tiny_model(seed=0).state_dict(), info_for(epoch=9))
    other = write_checkpoint(tmp_path / "c", tiny_model(seed=1).state_dict(), info_for())
    digest = hashlib.sha256((first / CHECKPOINT_WEIGHTS).read_bytes()).hexdigest()
    assert model_id(first) == f"crif-{digest[:12]}" == model_id(str(first))
    assert model_id(again) == model_id(first)  # the info is not part of the id
    assert model_id(other) != model_id(first)


def test_setup_key_is_the_extraction_hash_of_the_description():
    expected = hashlib.sha256(json.dumps(S3D, sort_keys=True).encode()).hexdigest()[:12]
    setup = ExtractorSetup.from_description(S3D)
    assert setup.setup_key() == expected
    assert setup.to_description() == S3D
    reordered = dict(reversed(list(S3D.items())))
    assert ExtractorSetup.from_description(reordered).setup_key() == expected
    # Existing caches stay valid: extraction parts and robustness features use this key.
    assert parts_directory(Path("out"), "visual", S3D) == Path("out/_parts") / f"visual-{expected}"
    changed = {**S3D, "config": {**S3D["config"], "fps": 4.0}}
    assert ExtractorSetup.from_description(changed).setup_key() != expected


def test_setup_of_a_metadata_document():
    setup = ExtractorSetup.from_metadata(info_for(), "visual")
    assert setup == ExtractorSetup.from_description(S3D)
    assert ExtractorSetup.from_metadata(info_for(), "audio") is None
    with pytest.raises(ValueError, match=r"needs \['weights'\]"):
        ExtractorSetup.from_description({k: v for k, v in S3D.items() if k != "weights"})


def test_check_matches_refuses_another_set_up_by_name():
    model = ExtractorSetup.from_description(S3D)
    model.check_matches(ExtractorSetup.from_description(json.loads(json.dumps(S3D))), "store")
    other = ExtractorSetup.from_description({**S3D, "weights": "s3d.pth sha256:0123456789ab"})
    message = (
        "store X: visual features do not match the model's "
        "(weights: model 'random' vs 's3d.pth sha256:0123456789ab')"
    )
    with pytest.raises(ValueError) as error:
        model.check_matches(other, "store X")
    assert str(error.value) == message
    with pytest.raises(ValueError, match=r"dim: model 1024 vs None; extractor: model 's3d' vs"):
        model.check_matches(None, "a store without visual features")


def test_consumers_do_not_import_the_training_loop():
    """Scoring, robustness and reports read models without pipeline.train.trainer or Ray Train."""
    code = (
        "import sys\n"
        "import pipeline.artifact, pipeline.score.batch, pipeline.score.robustness\n"
        "import pipeline.tune.report\n"
        "loaded = [m for m in ('pipeline.train.trainer', 'ray.train') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
