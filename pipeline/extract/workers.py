"""The Ray Data functions and actor classes of the extraction job.

Decoding functions run as CPU tasks, one video per call, and yield one row per clip so a
task never holds more than one clip. Model classes are built once per actor (weights
loaded in ``__init__``) and add a feature column in ``__call__``. A video that cannot be
decoded yields a row with ``error`` set instead of raising: a failure is data.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from pipeline.ingest.decode import DecodeError, decode_audio, iter_clips

__all__ = [
    "S3DFeatures",
    "TextFeatures",
    "VGGishFeatures",
    "decode_audio_examples",
    "decode_clips",
]

_ROW_KEYS = ("video_id", "path", "error", "stage")


def _s3d_config(config: dict):
    from feature_extractors import config_from_dict

    return config_from_dict("s3d", config)


def _clip_row(video_id, path, frames, **values) -> dict:
    row = {
        "video_id": np.array([video_id]),
        "path": np.array([path]),
        "frames": frames[None],
        "error": np.array([values.get("error", "")]),
        "stage": np.array([values.get("stage", "")]),
    }
    for key in ("clip_index", "num_clips", "padded"):
        row[key] = np.array([values.get(key, -1)], np.int32)
    for key in ("start_time", "end_time"):
        row[key] = np.array([values.get(key, 0.0)], np.float32)
    return row


def decode_clips(batch: dict, config: dict, shift: dict | None = None):
    """One video (batch of one row) -> one row per clip: uint8 frames (L, crop, crop, 3).

    ``shift``: an optional simulated camera shift (pipeline.score.shifts), seeded per video id.
    """
    s3d = _s3d_config(config)
    video_id, path = str(batch["video_id"][0]), str(batch["path"][0])
    try:
        for index, num_clips, plan, frames in iter_clips(path, s3d, shift=shift, key=video_id):
            yield _clip_row(
                video_id,
                path,
                frames,
                clip_index=index,
                num_clips=num_clips,
                padded=plan.padded,
                start_time=plan.start_time,
                end_time=plan.end_time,
            )
    except Exception as error:  # noqa: BLE001 - every failure becomes a recorded row
        empty = np.zeros((s3d.clip_len, s3d.crop, s3d.crop, 3), np.uint8)
        message = str(error)
        if not isinstance(error, DecodeError):
            message = f"{type(error).__name__}: {error}"
        yield _clip_row(video_id, path, empty, error=message or "decode failed", stage="decode")


class S3DFeatures:
    """Actor: uint8 clips -> 1024-d S3D features; rows with an error pass through.

    On CPUs Ray Data fuses `decode_clips` into this actor (same resources), and the job lets
    two calls run at once: one decodes its video while the other runs the model, so decoding
    hides behind the model. The lock keeps the model to one call at a time, on `threads`
    intra-op threads (default: every core this process may use; Ray would set 1, its
    logical num_cpus). `execution` and `expected_clips`: see feature_extractors/s3d.py.
    """

    def __init__(
        self,
        config: dict,
        device: str = "cpu",
        execution: str = "eager",
        expected_clips: int | None = None,
        threads: int | None = None,
    ):
        import os

        import torch

        from feature_extractors.s3d import S3DExtractor

        if threads is None and device == "cpu":
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        torch.set_num_threads(max(1, threads or torch.get_num_threads()))
        self.extractor = S3DExtractor(
            _s3d_config(config), device, execution=execution, expected_clips=expected_clips
        )
        self.lock = threading.Lock()

    def __call__(self, batch: dict) -> dict:
        frames = batch.pop("frames")
        ok = batch["error"] == ""
        features = np.zeros((len(ok), self.extractor.output_dim), np.float32)
        if ok.any():
            with self.lock:
                features[ok] = self.extractor(frames[ok])
        batch["feature"] = features
        return batch


def _error_table(rows: list[dict]) -> pa.Table:
    return pa.table(
        {
            "video_id": pa.array([r["video_id"] for r in rows], pa.string()),
            "path": pa.array([r["path"] for r in rows], pa.string()),
            "features": pa.array([r.get("features", []) for r in rows], pa.list_(pa.float32())),
            "dim": pa.array([r.get("dim", 0) for r in rows], pa.int32()),
            "error": pa.array([r.get("error", "") for r in rows], pa.string()),
            "stage": pa.array([r.get("stage", "") for r in rows], pa.string()),
        }
    )


class TextFeatures:
    """Actor: captions of many videos -> one [N, D] embedding matrix per video."""

    def __init__(self, config: dict, device: str = "cpu"):
        from feature_extractors import build_extractor

        self.extractor = build_extractor("text", config, device=device)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.select(["video_id", "path", "captions"]).to_pylist()
        embeddings = self.extractor.embed_videos([row["captions"] or [] for row in rows])
        out = []
        for row, matrix in zip(rows, embeddings, strict=True):
            if matrix is None:
                out.append({**row, "error": "no captions", "stage": "text"})
            else:
                out.append({**row, "features": matrix.reshape(-1), "dim": matrix.shape[1]})
        return _error_table(out)


def decode_audio_examples(table: pa.Table, config: dict) -> pa.Table:
    """One video -> its log-mel examples (N, 96, 64), flattened; or an error row."""
    from feature_extractors import config_from_dict
    from feature_extractors.vggish import waveform_to_examples

    vggish = config_from_dict("vggish", config)
    row = table.select(["video_id", "path"]).to_pylist()[0]
    try:
        decoded = decode_audio(row["path"])
        if decoded is None:
            return _error_table([{**row, "error": "no audio stream", "stage": "audio"}])
        examples = waveform_to_examples(decoded[0], decoded[1], vggish)  # (N, 96, 64)
        return _error_table([{**row, "features": examples.reshape(-1), "dim": examples[0].size}])
    except Exception as error:  # noqa: BLE001 - a failure is a recorded row
        return _error_table([{**row, "error": f"{error}", "stage": "audio"}])


class VGGishFeatures:
    """Actor: log-mel examples of several videos -> [T_a, 128] VGGish embeddings each."""

    def __init__(self, config: dict, device: str = "cpu"):
        from feature_extractors import build_extractor

        self.extractor = build_extractor("vggish", config, device=device)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        config = self.extractor.config
        shape = (round(config.example_window_seconds / config.hop_seconds), config.mel_bands)
        ok = [row for row in rows if not row["error"]]
        examples = [np.asarray(row["features"], np.float32).reshape(-1, *shape) for row in ok]
        if ok:  # one batched call for all videos of the batch, split back per video
            embeddings = self.extractor(np.concatenate(examples))
            bounds = np.cumsum([len(e) for e in examples])[:-1]
            for row, matrix in zip(ok, np.split(embeddings, bounds), strict=True):
                row.update(features=matrix.reshape(-1), dim=matrix.shape[1])
        return _error_table(rows)
