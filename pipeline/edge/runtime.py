"""Classify videos with an exported model: onnxruntime, numpy, PyAV and pyarrow only.

    model = EdgeModel.load("outputs/edge")                  # or one .onnx file alone
    probabilities = model.classify("video.mp4")               # (classes,) float32
    summary = score_videos(EdgeScoreConfig(model="outputs/edge", videos="clips/", out="preds"))

A video's clips (pipeline.edge.decode: the pipeline's own decoder, pipeline.decode, with its
torch-free backends) go through ``backbone.onnx`` a few at a time, then
its feature sequence through ``head.onnx``: memory is one clip batch, however long the video
or stream. Given a single ``model.onnx`` (the file alone), every clip of a video goes into
one call of the whole graph. ``OUT/predictions.parquet`` has the columns of jobs/score.py;
a video that cannot be decoded gets a row with status ``failed`` and the reason. The file is
written atomically (pipeline.common.atomic: stdlib and pyarrow only), once, at the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.edge.decode import DecodeError, is_stream_url, iter_clips
from pipeline.edge.metadata import (
    BACKBONE_FILE,
    HEAD_FILE,
    INT8_FILE,
    RESIZE_METHOD,
    ExportError,
    Preprocessing,
    file_sha256,
    metadata_from_onnx_props,
    read_export,
)

__all__ = ["EdgeModel", "EdgeScoreConfig", "Precision", "predictions_table", "score_videos"]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
EdgeDecoder = Literal["auto", "pyav", "decord"]  # pipeline.decode's torch-free backends


@dataclass(frozen=True)
class EdgeScoreConfig:
    """One edge scoring run; jobs/edge_score.py maps its flags 1:1 onto these fields."""

    model: str  # export directory (jobs/export.py --out), or one exported model.onnx alone
    videos: str  # videos: directory, glob, list file, .tar, one file, or a stream URL
    out: str  # output directory of predictions.parquet
    top_k: int = 5  # classes (with probabilities) listed per video
    precision: Precision = "fp32"  # backbone graph: fp32 or the int8 one (export --int8)
    clip_batch_size: int = 1  # clips per backbone call (memory: one batch of clips)
    threads: int | None = None  # ONNX Runtime intra-op threads (default: every usable core)
    limit: int | None = None  # only the first N videos
    max_seconds: float | None = None  # record a stream for this long; a file: clips before it
    decoder: EdgeDecoder = "auto"  # frame decoder: auto (pyav, then decord if installed)

    def __post_init__(self):
        if self.top_k < 1 or self.clip_batch_size < 1:
            raise ValueError("top_k and clip_batch_size must be >= 1")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"precision must be fp32 or int8, got {self.precision!r}")
        if self.decoder not in ("auto", "pyav", "decord"):
            raise ValueError(f"decoder must be auto, pyav or decord, got {self.decoder!r}")


def _session(path: Path, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is None and hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's InvalidProtobuf, Fail, ...
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {error}") from error


def _onnx_metadata(session, path: Path) -> dict:
    return metadata_from_onnx_props(session.get_modelmeta().custom_metadata_map, str(path))


class EdgeModel:
    """An exported model ready to classify: its sessions, preprocessing and class names."""

    def __init__(self, document: dict, *, backbone=None, head=None, whole=None):
        self.document = document
        self.preprocessing = Preprocessing.from_dict(document["preprocessing"])
        self.class_names = list(document["class_names"])
        self.model_id = document["model_id"]
        self.dtype = np.float32 if document.get("input_dtype") == "float32" else np.uint8
        self.backbone, self.head, self.whole = backbone, head, whole
        if self.preprocessing.resize_method != RESIZE_METHOD:
            raise ExportError(
                f"resize method {self.preprocessing.resize_method!r} needs torchvision; "
                f"the edge runner resizes with the decoder ({RESIZE_METHOD!r})"
            )

    @classmethod
    def load(
        cls, source: str | os.PathLike, precision: Precision = "fp32", threads: int | None = None
    ) -> EdgeModel:
        """An export directory (model.json, hashes checked) or one model.onnx file."""
        source = Path(source)
        if source.is_file():
            if precision != "fp32":
                raise ExportError("an int8 model is scored from its export directory")
            whole = _session(source, threads)
            model = cls(_onnx_metadata(whole, source), whole=whole)
            model._check_inputs(whole)
            return model
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: no such export directory or ONNX file")
        document = read_export(source)
        backbone_file = INT8_FILE if precision == "int8" else BACKBONE_FILE
        for name in (backbone_file, HEAD_FILE):
            _check_file(source, name, document)
        backbone = _session(source / backbone_file, threads)
        head = _session(source / HEAD_FILE, threads)
        for session, name in ((backbone, backbone_file), (head, HEAD_FILE)):
            embedded = _onnx_metadata(session, source / name)
            if embedded.get("model_id") != document["model_id"]:
                raise ExportError(
                    f"{source / name}: belongs to model {embedded.get('model_id')}, "
                    f"model.json to {document['model_id']}"
                )
        model = cls(document, backbone=backbone, head=head)
        model._check_inputs(backbone)
        return model

    def _check_inputs(self, session, name: str = "clips") -> None:
        """The graph's clip shape (its last 4 axes) must be the recorded preprocessing's."""
        inputs = {item.name: item for item in session.get_inputs()}
        if name not in inputs:
            raise ExportError(f"the ONNX graph has no input {name!r}: {sorted(inputs)}")
        shape = list(inputs[name].shape[-4:])
        if shape != list(self.preprocessing.clip_shape()):
            raise ExportError(
                f"the ONNX graph takes clips {shape}, the metadata records "
                f"{list(self.preprocessing.clip_shape())} (another S3D set-up)"
            )

    def features(self, clips: np.ndarray) -> np.ndarray:
        """uint8 clips (N, L, H, W, 3) -> S3D features (N, 1024) (backbone graph)."""
        feed = np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3), dtype=self.dtype)
        return self.backbone.run(None, {"clips": feed})[0]

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """One video's features (N, 1024) -> probabilities (classes,) (head graph)."""
        mask = np.ones((1, len(features)), bool)
        return self.head.run(None, {"features": features[None], "clip_mask": mask})[0][0]

    def classify_clips(self, clips: Iterable[np.ndarray], batch_size: int = 1) -> np.ndarray:
        """A video's preprocessed clips (each (L, H, W, 3) uint8) -> probabilities (classes,)."""
        if self.whole is not None:  # the one-file model: every clip in one call
            stacked = np.stack(list(clips))
            if not len(stacked):
                raise DecodeError("no clips")
            feed = np.ascontiguousarray(stacked.transpose(0, 4, 1, 2, 3), dtype=self.dtype)
            inputs = {"clips": feed[None], "clip_mask": np.ones((1, len(feed)), bool)}
            return self.whole.run(None, inputs)[0][0]
        features, pending = [], []
        for clip in clips:
            pending.append(clip)
            if len(pending) == batch_size:
                features.append(self.features(np.stack(pending)))
                pending = []
        if pending:
            features.append(self.features(np.stack(pending)))
        if not features:
            raise DecodeError("no clips")
        return self.probabilities(np.concatenate(features))

    def classify(
        self,
        path: str,
        *,
        batch_size: int = 1,
        max_seconds: float | None = None,
        decoder: EdgeDecoder = "auto",
    ):
        clips = iter_clips(path, self.preprocessing, max_seconds=max_seconds, decoder=decoder)
        return self.classify_clips((clip for _, clip in clips), batch_size)


def _check_file(directory: Path, name: str, document: dict) -> None:
    path = directory / name
    if not path.is_file():
        hint = " (export with --int8)" if name == INT8_FILE else ""
        raise ExportError(f"{path}: missing{hint}")
    expected = (document.get("files") or {}).get(name)
    if expected is None:
        raise ExportError(f"{directory}/model.json records no hash of {name}")
    if file_sha256(path) != expected:
        raise ExportError(f"{path}: content does not match model.json (corrupt or replaced)")


def _video_rows(config: EdgeScoreConfig) -> list[tuple[str, str | None]]:
    """(video_id, path) rows, named as jobs/score.py names them (pipeline.ingest.sources)."""
    if is_stream_url(config.videos):
        name = config.videos.split("://", 1)[1].split("?")[0].rstrip("/")
        video_id = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "stream"
        return [(video_id, config.videos)]
    from pipeline.ingest.sources import read_folder

    rows = [(row.video_id, row.path) for row in read_folder(config.videos).rows]
    return rows[: config.limit] if config.limit else rows


def score_videos(config: EdgeScoreConfig) -> dict:
    """Classify every video; write OUT/predictions.parquet; return a summary."""
    started = time.perf_counter()
    model = EdgeModel.load(config.model, config.precision, config.threads)
    rows = []
    for video_id, path in _video_rows(config):
        row = {"video_id": video_id, "path": path, "probabilities": None, "error": None}
        if path is None:
            row["error"] = "file not found"
        else:
            try:
                row["probabilities"] = model.classify(
                    path,
                    batch_size=config.clip_batch_size,
                    max_seconds=config.max_seconds,
                    decoder=config.decoder,
                )
            except DecodeError as error:
                row["error"] = str(error) or "decode failed"
        rows.append(row)
        logger.info(f"[edge] {video_id}: {'ok' if row['error'] is None else row['error']}")
    table = predictions_table(rows, model, config.top_k)
    from pipeline.common.atomic import atomic_write_table

    output = Path(config.out) / "predictions.parquet"
    atomic_write_table(table, output)
    ok = sum(row["error"] is None for row in rows)
    seconds = time.perf_counter() - started
    return {
        "predictions": str(output),
        "model_id": model.model_id,
        "precision": config.precision,
        "ok": ok,
        "failed": len(rows) - ok,
        "seconds": round(seconds, 2),
        "videos_per_second": round(len(rows) / seconds, 3) if seconds else None,
    }


def predictions_table(rows: list[dict], model: EdgeModel, top_k: int) -> pa.Table:
    """jobs/score.py's columns, one row per video, sorted by video id."""
    top_k = min(top_k, len(model.class_names))
    columns: dict[str, list] = {name: [] for name in _COLUMNS}
    for row in sorted(rows, key=lambda item: item["video_id"]):
        probabilities = row["probabilities"]
        order = None
        if probabilities is not None:
            order = np.argsort(-probabilities, kind="stable")[:top_k]
        columns["video_id"].append(row["video_id"])
        columns["path"].append(row["path"])
        columns["top_k_labels"].append(
            None if order is None else [model.class_names[i] for i in order]
        )
        columns["top_k_probabilities"].append(
            None if order is None else probabilities[order].tolist()
        )
        columns["top_k_indices"].append(None if order is None else order.tolist())
        columns["probabilities"].append(None if order is None else probabilities.tolist())
        columns["status"].append("ok" if row["error"] is None else "failed")
        columns["error"].append(row["error"])
        columns["model_id"].append(model.model_id)
    return pa.table({name: pa.array(columns[name], kind) for name, kind in _COLUMNS.items()})


_COLUMNS = {
    "video_id": pa.string(),
    "path": pa.string(),
    "top_k_labels": pa.list_(pa.string()),
    "top_k_probabilities": pa.list_(pa.float32()),
    "top_k_indices": pa.list_(pa.int32()),
    "probabilities": pa.list_(pa.float32()),
    "status": pa.string(),
    "error": pa.string(),
    "model_id": pa.string(),
}
