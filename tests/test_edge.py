"""Edge export and the torch-free runner: ONNX equals PyTorch, the runner equals jobs/score.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from feature_extractors import build_extractor
from feature_extractors.s3d import S3DConfig, S3DExtractor
from pipeline.artifact import write_checkpoint
from pipeline.crif.model import CRIFConfig, GRUBackbone, build_model
from pipeline.edge.decode import iter_clips, record_stream
from pipeline.edge.metadata import (
    BACKBONE_FILE,
    METADATA_KEY,
    MODEL_FILE,
    ExportError,
    Preprocessing,
    check_document,
)

REPO = Path(__file__).resolve().parents[1]
S3D = {"weights": "random", "clip_len": 16, "clip_stride": 16}
GUARD = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "ray", "transformers", "decord"):
            raise ImportError(f"{name} must not be imported by the edge runner")
sys.meta_path.insert(0, Block())
sys.argv = ["jobs/edge_score.py", *sys.argv[1:]]
runpy.run_path("jobs/edge_score.py", run_name="__main__")
"""


def write_model(directory: Path, *, task: str = "single_label", seed: int = 0) -> Path:
    """A CRIF model directory (full ablation, GRU) on the random-S3D set-up: random weights,
    a standardiser with non-trivial statistics, a sharpened classifier (peaked outputs)."""
    extractor = build_extractor("s3d", S3D)
    config = CRIFConfig(num_classes=5, semantic_dim=8, hidden_dim=32, shared_dim=32, rho=16)
    torch.manual_seed(seed)
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed + 1)
    standardizer = model.visual_input
    standardizer.count.fill_(100.0)
    standardizer.mean.copy_(torch.rand(1024, generator=generator, dtype=torch.float64))
    spread = 0.005 + 0.02 * torch.rand(1024, generator=generator, dtype=torch.float64)
    standardizer.second_moment.copy_(standardizer.mean**2 + spread)
    with torch.no_grad():
        model.fused_head[1].weight.mul_(8.0)
    info = {
        "format": "crif-checkpoint/1",
        "epoch": 0,
        "model_config": config.to_dict(),
        "task": task,
        "class_names": [f"class_{index}" for index in range(5)],
        "modalities": {"visual": extractor.describe()},
    }
    write_checkpoint(directory / "model", model.state_dict(), info)
    return directory


def torch_probabilities(model, extractor, clips: np.ndarray) -> np.ndarray:
    """jobs/score.py's computation for one video's clips: S3D features, CRIF, softmax."""
    features = torch.from_numpy(extractor(clips))[None]
    with torch.inference_mode():
        logits = model.predict(features, torch.ones(features.shape[:2], dtype=torch.bool))
    return logits.softmax(-1)[0].numpy()


# ---------------------------------------------------------------------------- fast


def test_edge_clips_equal_the_pipeline_clips(shared_data):
    """The edge runner decodes with the pipeline's decoder: the same clips, bit for bit."""
    from pipeline.ingest.decode import iter_clips as pipeline_clips

    config = S3DConfig(clip_len=16, clip_stride=16)
    preprocessing = Preprocessing.from_s3d_config(asdict(config))
    for path in sorted((shared_data / "videos").iterdir()):
        expected = list(pipeline_clips(str(path), S3DExtractor.inputs(config)))
        got = list(iter_clips(str(path), preprocessing))
        assert [plan for plan, _ in got] == [e[2] for e in expected], path.name
        for number, ((_, clip), e) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_array_equal(clip, e[3], err_msg=f"{path.name} clip {number}")


def test_max_seconds_and_a_recorded_stream(shared_data, tmp_path):
    """--max-seconds keeps a file's clips that start before it; a stream is recorded (packets
    copied, no decoding) for that long and its recording decoded like a file."""
    preprocessing = Preprocessing.from_s3d_config(asdict(S3DConfig(clip_len=16, clip_stride=16)))
    video = str(shared_data / "videos" / "v_GGSY1Qvo990.mp4")
    whole = list(iter_clips(video, preprocessing))
    first = list(iter_clips(video, preprocessing, max_seconds=3.0))
    assert [plan for plan, _ in first] == [plan for plan, _ in whole if plan.start_time < 3.0]
    assert 0 < len(first) < len(whole)
    recording = record_stream(video, tmp_path / "stream.mkv", max_seconds=3.0)
    recorded = list(iter_clips(str(recording), preprocessing))
    assert 3.0 <= recorded[-1][0].end_time < 3.2
    for (plan, clip), (want, frames) in zip(recorded, first[: len(recorded) - 1], strict=False):
        assert plan.frame_indices == want.frame_indices
        np.testing.assert_array_equal(clip, frames)


def test_exact_resize_is_recorded_and_refused_at_the_edge():
    from pipeline.edge.runtime import EdgeModel

    preprocessing = Preprocessing.from_s3d_config(asdict(S3DConfig(resize_method="exact")))
    assert preprocessing.resize_method == "exact"
    document = {"preprocessing": preprocessing.to_dict(), "class_names": ["a"], "model_id": "m"}
    with pytest.raises(ExportError, match="needs torchvision"):
        EdgeModel(document)


def test_scan_gru_equals_the_packed_gru():
    from pipeline.edge.export import ScanGRU

    torch.manual_seed(0)
    for gating in (False, True):
        backbone = GRUBackbone(24, 8, context_gating=gating).eval()
        sequence = torch.randn(4, 6, 24)
        mask = torch.arange(6)[None, :] < torch.tensor([6, 3, 1, 0])[:, None]  # one all-padding
        with torch.no_grad():
            expected = backbone(sequence, mask)
            got = ScanGRU(backbone)(sequence, mask)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        assert torch.equal(got[3], torch.zeros(8))  # an all-padding row: the zero state


def test_metadata_records_are_checked():
    preprocessing = Preprocessing.from_s3d_config(asdict(S3DConfig()))
    assert preprocessing.clip_shape() == (3, 64, 224, 224)
    assert Preprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    document = {
        "format": "crif-edge/1",
        "model_id": "crif-0",
        "task": "single_label",
        "class_names": ["a"],
        "preprocessing": preprocessing.to_dict(),
        "extractor": {},
        "inputs": {},
    }
    assert check_document(document, "x") is document
    with pytest.raises(ExportError, match="format"):
        check_document({**document, "format": "crif-edge/0"}, "x")
    with pytest.raises(ExportError, match="lacks"):
        check_document({k: v for k, v in document.items() if k != "class_names"}, "x")
    with pytest.raises(ExportError, match="resize method"):
        check_document(
            {**document, "preprocessing": {**document["preprocessing"], "resize_method": "x"}},
            "x",
        )


# ---------------------------------------------------------------------------- exported


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """A model directory and its export with int8 (calibrated on the shared videos)."""
    from pipeline.edge.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("edge")
    run = write_model(root / "run")
    summary = export_model(
        ExportConfig(
            model=str(run),
            out=str(root / "edge"),
            int8=True,
            calibration=str(shared_data / "videos"),
            calibration_clips=4,
        )
    )
    return {"run": run, "out": root / "edge", "summary": summary, "root": root}


def _edge_score(*args: str) -> subprocess.CompletedProcess:
    """jobs/edge_score.py in a subprocess where importing torch, Ray or transformers fails."""
    return subprocess.run(
        [sys.executable, "-c", GUARD, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        timeout=900,
    )


@pytest.mark.slow
def test_export_writes_three_graphs_with_their_record(exported):
    import onnx

    out = exported["out"]
    document = json.loads((out / "model.json").read_text())
    assert document["preprocessing"]["clip_len"] == 16 and document["preprocessing"]["crop"] == 224
    assert document["class_names"] == [f"class_{index}" for index in range(5)]
    assert set(document["files"]) == {MODEL_FILE, BACKBONE_FILE, "head.onnx", "backbone.int8.onnx"}
    assert max(exported["summary"]["parity"].values()) <= 1e-4
    for name in document["files"]:
        embedded = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        inside = json.loads(embedded[METADATA_KEY])
        assert inside["model_id"] == document["model_id"]
        assert inside["preprocessing"] == document["preprocessing"]
    int8 = onnx.load(str(out / "backbone.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)
    assert (out / "backbone.int8.onnx").stat().st_size < (out / BACKBONE_FILE).stat().st_size / 2


@pytest.mark.slow
def test_same_clips_give_pytorch_probabilities(exported, shared_data):
    """The pipeline's own clips through the edge graphs = jobs/score.py's torch path."""
    from pipeline.artifact import load_model
    from pipeline.edge.runtime import EdgeModel
    from pipeline.ingest.decode import iter_clips as pipeline_clips

    # A clip every 64 frames (15 clips of the real videos): the graphs do not depend on stride.
    inputs = S3DExtractor.inputs(S3DConfig(clip_len=16, clip_stride=64))
    model, extractor = load_model(exported["run"])[0], build_extractor("s3d", S3D)
    pair = EdgeModel.load(exported["out"])
    whole = EdgeModel.load(exported["out"] / MODEL_FILE)  # the one file alone
    for path in sorted((shared_data / "videos").iterdir()):
        clips = np.stack([frames for *_, frames in pipeline_clips(str(path), inputs)])
        expected = torch_probabilities(model, extractor, clips)
        np.testing.assert_allclose(pair.classify_clips(clips, batch_size=3), expected, atol=1e-4)
        np.testing.assert_allclose(whole.classify_clips(clips), expected, atol=1e-4)


@pytest.mark.slow
def test_torch_free_runner_equals_jobs_score(exported, shared_data, ray_session, tmp_path):
    from pipeline.score.batch import ScoreConfig, score_videos

    videos = tmp_path / "videos"
    videos.mkdir()
    for path in (shared_data / "videos").iterdir():
        (videos / path.name).symlink_to(path)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    result = _edge_score(
        "--model", str(exported["out"]), "--videos", str(videos), "--out", str(tmp_path / "e")
    )
    assert result.returncode == 0, result.stderr
    score_videos(
        ScoreConfig(model=str(exported["run"]), videos=str(videos), out=str(tmp_path / "s"))
    )
    edge = pq.read_table(tmp_path / "e" / "predictions.parquet")
    reference = pq.read_table(tmp_path / "s" / "predictions.parquet")
    assert edge.schema == reference.schema
    edge_rows = {row["video_id"]: row for row in edge.to_pylist()}
    for row in reference.to_pylist():
        got = edge_rows.pop(row["video_id"])
        assert (got["status"], got["path"], got["model_id"]) == (
            row["status"], row["path"], row["model_id"],
        )  # fmt: skip
        if row["status"] != "ok":
            assert got["error"] and got["probabilities"] is None
            continue
        assert got["top_k_indices"][0] == row["top_k_indices"][0], row["video_id"]
        difference = np.abs(np.subtract(got["probabilities"], row["probabilities"])).max()
        assert difference <= 1e-4, row["video_id"]  # the same clips: ONNX Runtime vs PyTorch
        print(f"{row['video_id']}: max probability difference {difference:.2e}")
    assert not edge_rows
    assert edge.column("status").to_pylist().count("failed") == 1


@pytest.mark.slow
def test_int8_runner_scores_every_video(exported, shared_data, tmp_path):
    result = _edge_score(
        "--model", str(exported["out"]), "--videos", str(shared_data / "videos" / "*.avi"),
        "--out", str(tmp_path / "e"), "--precision", "int8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "e" / "predictions.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["ok"]
    assert sum(rows[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_corrupt_onnx_and_a_run_dir_are_clear_errors_and_write_nothing(exported, tmp_path):
    import shutil

    from pipeline.edge.runtime import EdgeModel

    broken = tmp_path / "broken"
    shutil.copytree(exported["out"], broken)
    data = bytearray((broken / BACKBONE_FILE).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    (broken / BACKBONE_FILE).write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match model.json"):
        EdgeModel.load(broken)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="cannot load"):
        EdgeModel.load(garbage)
    for model in (broken, exported["run"]):
        result = _edge_score(
            "--model", str(model), "--videos", str(tmp_path), "--out", str(tmp_path / "o")
        )
        assert result.returncode == 2 and "error:" in result.stderr
    assert "export it first" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_another_s3d_setup_is_refused_and_nothing_is_written(exported, tmp_path):
    from feature_extractors.s3d import build_s3d_backbone
    from pipeline.edge.export import ExportConfig, export_model

    other = tmp_path / "other.pth"
    torch.save(build_s3d_backbone("random")[0].state_dict(), other)
    with pytest.raises(ValueError, match="do not match"):
        export_model(
            ExportConfig(
                model=str(exported["run"]), out=str(tmp_path / "x"), s3d_weights=str(other)
            )
        )
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]
