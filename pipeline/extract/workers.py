"""The Ray Data functions and the one actor class of the extraction job.

Every extractor declares what it needs (``Extractor.requirements``, feature_extractors/base.py);
its input kind picks the decode step, the input preparer:

    clips     prepare_clips: one video -> one row per clip, uint8 frames (seek, resample, crop)
    waveform  prepare_waveform: one video -> its audio items (the extractor's prepare_audio)
    captions  none: the manifest rows carry the captions

Preparers run as CPU tasks, one video per call, and never hold more than one clip. They
decode in a reusable child process per worker thread under a deadline scaled to the video's
duration (:mod:`pipeline.decode.guard`, :class:`DecodeOptions`), so a file that blocks,
hangs or crashes the decoder becomes a failure row (reason ``timeout`` or ``crashed``). Then
``ExtractorActor`` (one class for every extractor) loads the model once in ``__init__`` and
adds the feature column in ``__call__``. The actor gets the extractor *class* itself, so
Ray ships it to the workers (by reference when importable, by value when cloudpickle is told
so, e.g. a class defined in a test). A video that cannot be decoded gives a row with
``error`` set instead of raising: a failure is data.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.common.memory import release_free_memory
from pipeline.decode import ClipStream, Deadline, DecodeError, failure_reason, thread_worker
from pipeline.ingest.decode import decode_audio

__all__ = [
    "BATCH_FORMATS",
    "FAILURE_STAGES",
    "DecodeOptions",
    "ExtractorActor",
    "prepare_clips",
    "prepare_waveform",
]

# Failure `stage` of each input kind (recorded in _failures/).
FAILURE_STAGES = {"clips": "decode", "waveform": "audio", "captions": "text"}
# Batch format of each kind: clip rows carry ndarray frames, the others variable-length lists.
BATCH_FORMATS = {"clips": "numpy", "waveform": "pyarrow", "captions": "pyarrow"}
# Why a video gave no items at all.
_NO_ITEMS = {"waveform": "no audio items", "captions": "no captions"}


@dataclass(frozen=True)
class DecodeOptions:
    """How the decode step runs: the decoder policy (auto, pyav, decord, torchcodec), the
    deadline, and whether it runs in the killable child (``guarded``) or in the worker."""

    decoder: str = "auto"
    min_seconds: float = 60.0
    seconds_per_second: float = 2.0
    guarded: bool = True

    @property
    def deadline(self) -> Deadline:
        return Deadline(self.min_seconds, self.seconds_per_second)


def _config(extractor_class, config: dict):
    from feature_extractors import config_from_dict

    return config_from_dict(extractor_class, config)


def _clip_row(
    video_id, path, frames, plan=None, index=-1, num_clips=-1, error="", reason="", decode=None
) -> dict:
    return {
        "video_id": np.array([video_id]),
        "path": np.array([path]),
        "frames": frames[None],
        "error": np.array([error]),
        "stage": np.array([FAILURE_STAGES["clips"] if error else ""]),
        "reason": np.array([reason]),
        "decode": np.array([json.dumps(decode) if decode else ""]),
        "clip_index": np.array([index], np.int32),
        "num_clips": np.array([num_clips], np.int32),
        "padded": np.array([plan.padded if plan else -1], np.int32),
        "start_time": np.array([plan.start_time if plan else 0.0], np.float32),
        "end_time": np.array([plan.end_time if plan else 0.0], np.float32),
    }


def prepare_clips(
    batch: dict,
    extractor_class,
    config: dict,
    shift: dict | None = None,
    decode: DecodeOptions = DecodeOptions(),
):
    """One video (batch of one row) -> one row per clip: uint8 frames (L, crop, crop, 3),
    with the decode record (backend, rotation, ...) as JSON in ``decode``.

    ``shift``: an optional simulated camera shift (pipeline.score.shifts), seeded per video id.
    """
    inputs = extractor_class.inputs(_config(extractor_class, config))
    video_id, path = str(batch["video_id"][0]), str(batch["path"][0])
    try:
        if decode.guarded:
            clips = thread_worker().clips(
                path, inputs, decode.decoder, shift=shift, key=video_id, timing=decode.deadline
            )
            record = clips.info
        else:
            clips = ClipStream(path, inputs, decode.decoder, shift=shift, key=video_id)
            record = clips.info.record()
        with clips:
            for index, num_clips, plan, frames in clips:
                yield _clip_row(video_id, path, frames, plan, index, num_clips, decode=record)
    except Exception as error:  # noqa: BLE001 - every failure becomes a recorded row
        empty = np.zeros((inputs.clip_len, inputs.crop, inputs.crop, 3), np.uint8)
        message = str(error)
        if not isinstance(error, DecodeError):
            message = f"{type(error).__name__}: {error}"
        reason = failure_reason(error)
        yield _clip_row(video_id, path, empty, error=message or "decode failed", reason=reason)


def _row_table(rows: list[dict]) -> pa.Table:
    """Per-video rows: flattened `features` (items before the model, features after) of
    shape (-1, *shape), or an error."""
    return pa.table(
        {
            "video_id": pa.array([r["video_id"] for r in rows], pa.string()),
            "path": pa.array([r["path"] for r in rows], pa.string()),
            "features": pa.array([r.get("features", []) for r in rows], pa.list_(pa.float32())),
            "shape": pa.array([r.get("shape", []) for r in rows], pa.list_(pa.int32())),
            "error": pa.array([r.get("error", "") for r in rows], pa.string()),
            "stage": pa.array([r.get("stage", "") for r in rows], pa.string()),
            "reason": pa.array([r.get("reason", "") for r in rows], pa.string()),
        }
    )


def prepare_waveform(
    table: pa.Table, extractor_class, config: dict, decode: DecodeOptions = DecodeOptions()
) -> pa.Table:
    """One video -> its audio items (the extractor's prepare_audio), flattened; or an error.
    The audio is decoded in the guarded child too (``decode.guarded``), under its deadline."""
    row = table.select(["video_id", "path"]).to_pylist()[0]
    stage = FAILURE_STAGES["waveform"]
    try:
        if decode.guarded:
            decoded = thread_worker().audio(row["path"], decode.deadline)
        else:
            decoded = decode_audio(row["path"])
        if decoded is None:
            return _row_table(
                [{**row, "error": "no audio stream", "stage": stage, "reason": "no_audio"}]
            )
        items = extractor_class.prepare_audio(_config(extractor_class, config), *decoded)
        items = np.asarray(items, np.float32)
        return _row_table([{**row, "features": items.reshape(-1), "shape": items.shape[1:]}])
    except Exception as error:  # noqa: BLE001 - a failure is a recorded row
        reason = failure_reason(error)
        return _row_table([{**row, "error": f"{error}", "stage": stage, "reason": reason}])


class ExtractorActor:
    """Actor: model-ready inputs -> features of one registered extractor; errors pass through.

    clips: one feature per clip row (column ``feature``). waveform and captions: the items of
    every video of the batch go through the model in one call, split back per video
    (flattened ``features`` of ``shape`` (D,)). With ``resources.all_cores`` the model uses
    ``threads`` intra-op threads on CPU (default: every core this process may use; Ray would
    set its logical num_cpus). ``options``: extractor keyword arguments (S3D's execution).
    A lock keeps the model to one call at a time when the pool runs calls concurrently.
    """

    def __init__(
        self,
        extractor_class,
        config: dict,
        device: str = "cpu",
        threads: int | None = None,
        options: dict | None = None,
        trim_memory: bool = True,
    ):
        if extractor_class.resources.all_cores:
            _set_threads(threads, device)
        self.extractor = extractor_class(
            _config(extractor_class, config), device, **(options or {})
        )
        self.kind = extractor_class.inputs(self.extractor.config).kind
        self.lock = threading.Lock()
        self.trim_memory = trim_memory

    def __call__(self, batch):
        if self.kind == "clips":
            return self._clips(batch)
        return self._videos(batch)

    def _clips(self, batch: dict) -> dict:
        frames = batch.pop("frames")
        ok = batch["error"] == ""
        features = np.zeros((len(ok), self.extractor.output_dim), np.float32)
        if ok.any():
            with self.lock:
                features[ok] = self.extractor(frames[ok])
                if self.trim_memory:
                    release_free_memory()
        batch["feature"] = features
        return batch

    def _videos(self, table: pa.Table) -> pa.Table:
        if self.kind == "captions":
            rows = table.select(["video_id", "path", "captions"]).to_pylist()
            items = [list(row.pop("captions") or []) for row in rows]
            rows = [{**row, "error": "", "stage": ""} for row in rows]
        else:
            rows = table.select(["video_id", "path", "error", "stage", "reason"]).to_pylist()
            features, shapes = table.column("features"), table.column("shape").to_pylist()
            items = [
                np.asarray(features[index].values, np.float32).reshape(-1, *shapes[index])
                for index in range(len(rows))
            ]
        ok = [index for index, row in enumerate(rows) if not row["error"] and len(items[index])]
        for index, row in enumerate(rows):
            if not row["error"] and not len(items[index]):
                reason = _NO_ITEMS[self.kind].replace(" ", "_")
                row.update(
                    error=_NO_ITEMS[self.kind], stage=FAILURE_STAGES[self.kind], reason=reason
                )
        if ok:  # one batched call for all videos of the batch, split back per video
            with self.lock:
                embeddings = self.extractor(_concatenate([items[index] for index in ok]))
            bounds = np.cumsum([len(items[index]) for index in ok])[:-1]
            for index, matrix in zip(ok, np.split(embeddings, bounds), strict=True):
                rows[index].update(features=matrix.reshape(-1), shape=matrix.shape[1:])
        return _row_table(rows)


def _concatenate(items: list):
    """Items of several videos as one model input: arrays stacked, lists (captions) joined."""
    if isinstance(items[0], np.ndarray):
        return np.concatenate(items)
    return [item for video in items for item in video]


def _set_threads(threads: int | None, device: str) -> None:
    import os

    import torch

    if threads is None and device == "cpu":
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(max(1, threads or torch.get_num_threads()))
