"""Decoding videos and audio tracks for the extractors, with bounded memory.

Video frames are decoded with decord at the extractor's reduced size (the scaler runs
inside FFmpeg), seeking to just the frames each clip needs, one clip at a time: memory
per task is one clip, whatever the length of the video. Audio is decoded with PyAV from
the container (any codec), kept at its native rate and down-mixed by averaging channels;
resampling to 16 kHz is the audio extractor's own preprocessing.

Paths may be local files, pyarrow-filesystem URIs or ``archive.tar::member`` references;
the latter two are read into memory (one video) through :func:`pipeline.ingest.manifest.open_input`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DecodeError",
    "MAX_PIXELS",
    "MIN_FRAMES",
    "VideoInfo",
    "decode_audio",
    "iter_clips",
    "open_video",
    "probe_video",
]

# 8K UHD: anything larger is refused before decoding a frame (a decoded frame of a
# hostile 30000x30000 file would need gigabytes).
MAX_PIXELS = 7680 * 4320
# Fewer decodable frames than this is "too short" to be a video.
MIN_FRAMES = 2


class DecodeError(RuntimeError):
    """A video or audio track could not be decoded; the message is recorded as a failure."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def _is_local(path: str) -> bool:
    return "::" not in path and "://" not in path or path.startswith("file://")


@contextmanager
def _source(path: str):
    """A local filename as is (decord streams it), anything else as an in-memory file."""
    if _is_local(path):
        local = path[len("file://") :] if path.startswith("file://") else path
        if not os.path.isfile(local):
            raise DecodeError(f"file not found: {local}")
        if os.path.getsize(local) == 0:
            raise DecodeError("empty file (0 bytes)")
        yield local
        return
    from pipeline.ingest.manifest import open_input

    with open_input(path) as handle:
        data = handle.read()
    if not data:
        raise DecodeError("empty file (0 bytes)")
    yield io.BytesIO(data)


def probe_video(path: str) -> VideoInfo:
    """Frame count, rate and native size, without decoding frames."""
    import decord

    with _source(path) as source:
        try:
            reader = decord.VideoReader(source, num_threads=1)
        except Exception as error:  # decord raises a bare RuntimeError/DECORDError
            raise DecodeError(f"not a decodable video: {_first_line(error)}") from error
        height, width = reader[0].shape[:2] if len(reader) else (0, 0)
        return VideoInfo(len(reader), float(reader.get_avg_fps()), width, height)


@contextmanager
def open_video(path: str, size: tuple[int, int], threads: int = 1):
    """A decord reader that scales frames to ``size`` = (height, width) while decoding."""
    import decord

    with _source(path) as source:
        width, height = _native_size(source)
        if width * height > MAX_PIXELS:
            raise DecodeError(
                f"resolution {width}x{height} exceeds the limit of {MAX_PIXELS} pixels"
            )
        try:
            reader = decord.VideoReader(source, width=size[1], height=size[0], num_threads=threads)
        except Exception as error:
            raise DecodeError(f"not a decodable video: {_first_line(error)}") from error
        if len(reader) < MIN_FRAMES:
            raise DecodeError(f"too short: {len(reader)} frame(s), need at least {MIN_FRAMES}")
        yield reader


def _native_size(source) -> tuple[int, int]:
    """Width and height from the container's metadata: no frame is decoded."""
    import av

    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            context = container.streams.video[0].codec_context
            size = int(context.width or 0), int(context.height or 0)
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(f"not a decodable video: {_first_line(error)}") from error
    finally:
        if isinstance(source, io.BytesIO):
            source.seek(0)
    return size


def iter_clips(
    path: str, config, threads: int = 1, *, shift: dict | None = None, key: str | None = None
) -> Iterator[tuple[int, int, object, np.ndarray]]:
    """Yield ``(index, num_clips, clip_plan, frames)`` for each clip S3D ``config`` plans.

    ``frames`` is uint8 (clip_len, crop, crop, 3), already preprocessed. Frames are fetched
    per clip (decord seeks), so at most one clip is held in memory. ``shift`` (a
    :mod:`pipeline.score.shifts` description, ``{"name", "severity", "seed"}``) simulates another
    camera on each clip's decoded frames, before the crop, seeded by ``key`` (default: path).
    """
    from feature_extractors.s3d import plan_clips, preprocess_frames

    with open_video(path, tuple(config.resize), threads) as reader:
        fps = float(reader.get_avg_fps())
        if not fps > 0:
            raise DecodeError(f"invalid frame rate {fps}")
        plans = plan_clips(len(reader), fps, config.fps, config.clip_len, config.clip_stride)
        for number, plan in enumerate(plans):
            indices = list(plan.frame_indices)
            unique = sorted(set(indices))
            try:
                decoded = reader.get_batch(unique).asnumpy()  # (U, H, W, 3) uint8
            except Exception as error:
                raise DecodeError(
                    f"decoding frames {unique[0]}-{unique[-1]} failed: {_first_line(error)}"
                ) from error
            position = {index: row for row, index in enumerate(unique)}
            frames = decoded[[position[index] for index in indices]]
            if shift is not None:
                from pipeline.score.shifts import shift_clip

                frames = shift_clip(frames, shift, key or path, number)
            yield number, len(plans), plan, preprocess_frames(frames, config)


def decode_audio(path: str) -> tuple[np.ndarray, int] | None:
    """Mono float32 waveform and its native sample rate, or None when there is no audio."""
    import av

    with _source(path) as source:
        try:
            container = av.open(source)
        except Exception as error:
            raise DecodeError(f"not a readable container: {_first_line(error)}") from error
        with container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # float planar, native layout and rate
            chunks: list[np.ndarray] = []
            sample_rate = stream.rate
            try:
                for frame in container.decode(stream):
                    for converted in resampler.resample(frame):
                        chunks.append(converted.to_ndarray().mean(axis=0))
                        sample_rate = converted.sample_rate
                for converted in resampler.resample(None):
                    chunks.append(converted.to_ndarray().mean(axis=0))
            except Exception as error:
                raise DecodeError(f"audio decoding failed: {_first_line(error)}") from error
    if not chunks:
        raise DecodeError("audio stream has no decodable samples")
    return np.concatenate(chunks).astype(np.float32), int(sample_rate)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
