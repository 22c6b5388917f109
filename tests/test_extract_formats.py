"""The extraction job on a folder of every kind of video, a named pipe and broken files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline import store
from pipeline.extract.job import ExtractConfig, extract_features
from pipeline.synthetic.formats import FORMATS, write_format_files

CLIP = {"s3d_weights": "random", "clip_len": 16, "clip_stride": 16, "s3d_execution": "eager"}
# Relative L2 distance of a file's features from those of its H.264 copy (random S3D):
# measured 0.007-0.023 for every kind but 4:4:4 (0.076: its chroma is not subsampled).
FORMAT_TOLERANCE = 0.1


def _msrvtt(path, video_ids):
    videos = [
        {"video_id": v, "category": 0, "split": "train", "url": "", "id": i}
        for i, v in enumerate(video_ids)
    ]
    sentences = [{"video_id": v, "caption": "a clip", "sen_id": i} for i, v in enumerate(video_ids)]
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return path


@pytest.mark.slow
def test_every_kind_extracts_and_broken_inputs_are_recorded(ray_session, tmp_path):
    videos = tmp_path / "videos"
    files = write_format_files(videos)
    ids = {kind: path.stem for kind, path in files.items()}
    ids["mpegts"] = "h264_ts"  # h264.mp4 and h264.ts share a stem
    os.rename(files["mpegts"], videos / "h264_ts.ts")
    os.mkfifo(videos / "pipe.mp4")  # never returns data
    (videos / "truncated.mp4").write_bytes(files["h264"].read_bytes()[:3000])
    annotations = _msrvtt(
        tmp_path / "train_val_videodatainfo.json", [*ids.values(), "pipe", "truncated"]
    )
    config = ExtractConfig(
        videos=str(videos),
        annotations=(str(annotations),),
        out=str(tmp_path / "store"),
        modalities=("visual",),
        decode_timeout=10.0,
        **CLIP,
    )
    summary = extract_features(config)
    assert summary["modalities"]["visual"]["ok"] == len(FORMATS)
    metadata = store.validate_store(config.out)
    assert metadata["format_version"] == 2 and metadata["decoding"]["decoder"] == "auto"
    resize = metadata["decoding"]["resize"]  # the default keeps FFmpeg's scaler: its difference
    assert resize["method"] == "decoder" and resize["difference_from_exact"]["mean_abs_255"] > 0
    rows = {row["video_id"]: row for row in store.read_store(config.out).to_pylist()}
    reference = store.sequence_to_numpy(rows[ids["h264"]]["visual"], 1024)
    for kind, video_id in ids.items():
        features = store.sequence_to_numpy(rows[video_id]["visual"], 1024)
        distance = np.linalg.norm(features - reference) / np.linalg.norm(reference)
        assert distance < FORMAT_TOLERANCE, f"{kind}: {distance:.3f}"
        decode = rows[video_id]["visual_decode"]
        assert decode["backend"] == "pyav"
        assert decode["rotation"] == (270 if kind == "rotated" else 0)
        assert decode["variable_rate"] == (kind == "vfr")
    failures = {row["video_id"]: row for row in store.read_failures(config.out).to_pylist()}
    assert set(failures) == {"pipe", "truncated"}
    assert failures["pipe"]["reason"] == "timeout" and failures["pipe"]["stage"] == "decode"
    assert failures["truncated"]["reason"] == "undecodable"
    # A rerun retries the failures only; _failures/ keeps one current row per video.
    again = extract_features(config)
    assert again["modalities"]["visual"]["skipped"] == len(FORMATS)
    failures = store.read_failures(config.out).to_pylist()
    assert sorted(row["video_id"] for row in failures) == ["pipe", "truncated"]
    assert all(row["attempts"] == 2 for row in failures)
