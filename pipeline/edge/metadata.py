"""The record of an exported model: what a runner needs besides the ONNX graph (stdlib only).

    preprocessing = Preprocessing.from_s3d_config(setup.config)    # at export
    document = read_export("outputs/edge")                            # at the edge: model.json
    document = metadata_from_onnx_props(dict_of_metadata_props)       # or from the file alone

An export directory holds ``model.onnx`` (a video's clips in, its probabilities out: the one
file), ``backbone.onnx`` (clips -> S3D features) and ``head.onnx`` (features -> probabilities),
the pair the runner uses so that memory stays one clip batch however long the video,
optionally ``backbone.int8.onnx``, and ``model.json``. The JSON document, less its ``files``
hashes, is also stored in each ONNX file's metadata under the key ``crif_edge``, so a file
alone is enough to classify a video.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXPORT_FORMAT",
    "BACKBONE_FILE",
    "HEAD_FILE",
    "INT8_FILE",
    "METADATA_FILE",
    "METADATA_KEY",
    "MODEL_FILE",
    "ExportError",
    "Preprocessing",
    "check_document",
    "file_sha256",
    "metadata_from_onnx_props",
    "read_export",
]

EXPORT_FORMAT = "crif-edge/1"
MODEL_FILE = "model.onnx"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"
INT8_FILE = "backbone.int8.onnx"
METADATA_FILE = "model.json"
METADATA_KEY = "crif_edge"
REQUIRED = ("format", "model_id", "task", "class_names", "preprocessing", "extractor", "inputs")
# How frames are resized, then centre-cropped: FFmpeg's bilinear scaler while decoding (the
# S3D config's resize_method "decoder", what the edge runner does), or "exact" (torchvision's
# resize of the native frames: recorded so that an edge runner can refuse it).
RESIZE_METHOD = "ffmpeg-bilinear"
RESIZE_METHODS = {"decoder": RESIZE_METHOD, "exact": "exact"}  # S3DConfig's -> recorded


class ExportError(ValueError):
    """An export directory or ONNX file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Preprocessing:
    """Frames -> model input, exactly as the S3D extractor's config records it.

    Resample to ``fps`` (nearest native frame), cut clips of ``clip_len`` sampled frames every
    ``clip_stride``, resize to ``resize`` (H, W) with ``resize_method``, centre-crop ``crop``;
    the model itself scales by 1/255 and normalises with ``mean``/``std``.
    """

    fps: float
    resize: tuple[int, int]
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    clip_len: int
    clip_stride: int
    resize_method: str = RESIZE_METHOD

    @classmethod
    def from_s3d_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        return cls(
            fps=float(config["fps"]),
            resize=(int(config["resize"][0]), int(config["resize"][1])),
            crop=int(config["crop"]),
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
            clip_len=int(config["clip_len"]),
            clip_stride=int(config["clip_stride"]),
            resize_method=RESIZE_METHODS[config.get("resize_method", "decoder")],
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Preprocessing:
        try:
            preprocessing = cls(
                fps=float(record["fps"]),
                resize=(int(record["resize"][0]), int(record["resize"][1])),
                crop=int(record["crop"]),
                mean=tuple(float(v) for v in record["mean"]),
                std=tuple(float(v) for v in record["std"]),
                clip_len=int(record["clip_len"]),
                clip_stride=int(record["clip_stride"]),
                resize_method=str(record.get("resize_method", RESIZE_METHOD)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ExportError(f"preprocessing record is incomplete: {error!r}") from error
        if preprocessing.resize_method not in RESIZE_METHODS.values():
            raise ExportError(f"unknown resize method {preprocessing.resize_method!r}")
        if preprocessing.fps <= 0 or preprocessing.clip_len < 1 or preprocessing.clip_stride < 1:
            raise ExportError(f"invalid preprocessing record: {dict(record)}")
        if preprocessing.crop > min(preprocessing.resize):
            raise ExportError(f"crop {preprocessing.crop} exceeds resize {preprocessing.resize}")
        return preprocessing

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["resize"], record["mean"], record["std"] = (
            list(self.resize),
            list(self.mean),
            list(self.std),
        )
        return record

    def clip_shape(self) -> tuple[int, int, int, int]:
        """One clip as the model takes it: (3, clip_len, crop, crop)."""
        return (3, self.clip_len, self.crop, self.crop)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_document(document: Any, where: str) -> dict[str, Any]:
    """The document if it is a crif-edge record of a known format; ExportError otherwise."""
    if not isinstance(document, dict):
        raise ExportError(f"{where}: not a crif-edge metadata record")
    if document.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{where}: format {document.get('format')!r}, this runner reads {EXPORT_FORMAT!r}"
        )
    missing = [name for name in REQUIRED if name not in document]
    if missing:
        raise ExportError(f"{where}: metadata lacks {missing}")
    if document["task"] not in ("single_label", "multi_label"):
        raise ExportError(f"{where}: unknown task {document['task']!r}")
    Preprocessing.from_dict(document["preprocessing"])
    return document


def metadata_from_onnx_props(props: Mapping[str, str], where: str) -> dict[str, Any]:
    """The record stored in an ONNX file's metadata (``metadata_props``)."""
    if METADATA_KEY not in props:
        raise ExportError(f"{where}: an ONNX file without crif-edge metadata ({METADATA_KEY!r})")
    try:
        document = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ExportError(f"{where}: unreadable crif-edge metadata: {error}") from error
    return check_document(document, where)


def read_export(directory: str | Path) -> dict[str, Any]:
    """model.json of an export directory, checked (format, fields, preprocessing)."""
    directory = Path(directory)
    path = directory / METADATA_FILE
    if not path.is_file():
        hint = ""
        if (directory / "checkpoint.json").is_file() or (directory / "model").is_dir():
            hint = " (a trained model directory: export it first with jobs/export.py)"
        raise ExportError(f"{directory}: no {METADATA_FILE}, not an exported model{hint}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path}: not valid JSON: {error}") from error
    return check_document(document, str(path))
