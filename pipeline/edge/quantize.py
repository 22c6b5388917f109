"""int8 static quantisation (QDQ) of the exported S3D backbone, calibrated on real clips.

    quantize_backbone("edge/backbone.onnx", "edge/backbone.int8.onnx", "features/", prep, 16)

Only the convolutions are quantised (weights int8 per channel, activations uint8 with
MinMax ranges): they are nearly all of the work, and the CRIF head stays float. Dynamic
quantisation is no option: ONNX Runtime's dynamic path breaks Conv3d. Calibration clips
come from a folder/glob/list/tar of videos or from a feature store's training videos
(``dataset.json`` ``source.videos``, rows of split ``train``), decoded by the edge decoder,
so they are preprocessed exactly as at inference. No torch here.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.edge.decode import DecodeError, iter_clips
from pipeline.edge.metadata import Preprocessing

__all__ = ["calibration_videos", "calibration_clips", "quantize_backbone"]

logger = logging.getLogger(__name__)


def calibration_videos(source: str) -> list[str]:
    """Video paths: a feature store's training videos, or the videos ``source`` names."""
    from pipeline.ingest.sources import find_videos, read_folder

    metadata_path = Path(source) / "dataset.json"
    if metadata_path.is_file():
        import json

        import pyarrow.parquet as pq

        metadata = json.loads(metadata_path.read_text())
        root = (metadata.get("source") or {}).get("videos")
        if not root:
            raise ValueError(f"{source}: the store does not record its videos (source.videos)")
        files = sorted(str(p) for p in Path(source).glob("*.parquet"))
        table = pq.read_table(files, columns=["video_id", "split"]) if files else None
        ids = [] if table is None else [
            video_id
            for video_id, split in zip(
                table.column("video_id").to_pylist(), table.column("split").to_pylist(), strict=True
            )
            if split == "train"
        ]  # fmt: skip
        paths = find_videos(root)
        videos = [paths[video_id] for video_id in sorted(ids) if video_id in paths]
    else:
        videos = [row.path for row in read_folder(source).rows if row.path]
    if not videos:
        raise ValueError(f"{source}: no calibration videos found")
    return videos


def calibration_clips(
    videos: list[str], preprocessing: Preprocessing, count: int
) -> Iterator[np.ndarray]:
    """Up to ``count`` clips (3, L, H, W) uint8, spread over the videos (a few per video)."""
    per_video = max(1, math.ceil(count / len(videos)))
    given = 0
    for path in videos:
        try:
            for taken, (_, clip) in enumerate(iter_clips(path, preprocessing)):
                if taken >= per_video or given >= count:
                    break
                yield clip.transpose(3, 0, 1, 2)
                given += 1
        except DecodeError as error:
            logger.warning(f"[int8] calibration skips {path}: {error}")
        if given >= count:
            return


class _OneClip:
    """onnxruntime.quantization's CalibrationDataReader protocol for a single clip."""

    def __init__(self, feed: dict):
        self.feed = feed

    def get_next(self):
        feed, self.feed = self.feed, None
        return feed


def _activation_ranges(model: Path, clips: Iterator[np.ndarray], dtype: str, scratch: Path):
    """MinMax ranges of the convolutions' inputs, merged clip by clip (memory: one clip's
    activations; onnxruntime's own CalibMaxIntermediateOutputs drops them instead of
    merging in 1.32). Returns (TensorsData, clips used)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        model,
        ["Conv"],
        augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
    )
    used = 0
    for clip in clips:
        calibrator.collect_data(_OneClip({"clips": clip[None].astype(dtype)}))
        calibrator.compute_data()  # merges this clip's ranges into the running ones
        calibrator.clear_collected_data()
        used += 1
    ranges = calibrator.calibrate_tensors_range if used else None
    del calibrator
    return ranges, used


def quantize_backbone(
    model: Path, output: Path, source: str, preprocessing: Preprocessing, count: int
) -> dict:
    """Write the int8 (QDQ) ``output`` of the backbone graph ``model``; return its record."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(model), load_external_data=False)
    dtype = {1: "float32", 2: "uint8"}[graph.graph.input[0].type.tensor_type.elem_type]
    clips = calibration_clips(calibration_videos(source), preprocessing, count)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        ranges, used = _activation_ranges(prepared, clips, dtype, scratch)
        if not used:
            raise ValueError(f"{source}: no clip could be decoded for calibration")
        cache = scratch / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(prepared),
            str(output),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=cache,
        )
    logger.info(f"[int8] calibrated on {used} clips -> {output}")
    return {"calibration_clips": used, "source": source, "method": "QDQ, MinMax, Conv only"}
