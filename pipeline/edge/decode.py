"""A video or stream -> the recorded clips, by the pipeline's own decoder (torch-free backends).

    for plan, clip in iter_clips("video.mp4", preprocessing):   # clip: (L, crop, crop, 3)
        ...
    for plan, clip in iter_clips("rtsp://camera/stream", preprocessing, max_seconds=60):
        ...

Clips come from :class:`pipeline.decode.ClipStream`, the decoder ``jobs/score.py`` and the
extraction use: the same backends, the same plan from the frames' presentation times
(``feature_extractors.clip_plan``), the same decoder scaling and crop, so they are the
pipeline's clips bit for bit. Only the torch-free backends are used (``TORCH_FREE``: pyav,
then decord when it imports); one clip is in memory at a time.

A stream URL (rtsp, http, ...) is first recorded (its video packets copied, no decoding) to a
temporary file, until it ends or for ``max_seconds``, and that file is decoded: the clips of
a stream are those of the recording. For a file, ``max_seconds`` keeps the clips that start
before it.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.decode.backends import TORCH_FREE, DecodeError, first_line
from pipeline.decode.clips import ClipStream
from pipeline.edge.metadata import RESIZE_METHOD, Preprocessing

__all__ = ["STREAM_SCHEMES", "DecodeError", "is_stream_url", "iter_clips", "record_stream"]

# Network sources PyAV opens itself (the rest go through pipeline.ingest.sources.open_input).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "hls")


def is_stream_url(path: str) -> bool:
    scheme, separator, _ = str(path).partition("://")
    return bool(separator) and scheme.lower() in STREAM_SCHEMES


def record_stream(url: str, target: Path, max_seconds: float | None = None) -> Path:
    """Copy the first video stream of ``url`` into ``target`` (Matroska), without decoding,
    until the stream ends or ``max_seconds`` of it have been copied."""
    import av

    try:
        source = av.open(url, timeout=30)
    except Exception as error:  # av.error.*, OSError: the message is what the row records
        raise DecodeError(f"not a decodable video: {first_line(error)}") from error
    with source, av.open(str(target), "w", format="matroska") as sink:
        if not source.streams.video:
            raise DecodeError("no video stream")
        stream = source.streams.video[0]
        output = sink.add_stream_from_template(stream)
        first = None
        try:
            for packet in source.demux(stream):
                if packet.dts is None or packet.size == 0:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                first = stamp if first is None else first
                if max_seconds is not None and (stamp - first) * stream.time_base >= max_seconds:
                    break
                packet.stream = output
                sink.mux(packet)
        except av.error.FFmpegError as error:
            if first is None:
                raise DecodeError(f"reading the stream failed: {first_line(error)}") from error
    return target


def iter_clips(
    path: str,
    preprocessing: Preprocessing,
    *,
    max_seconds: float | None = None,
    decoder: str = "auto",
) -> Iterator[tuple[object, np.ndarray]]:
    """Yield ``(plan, clip)`` per clip: uint8 (clip_len, crop, crop, 3), preprocessed as the
    export records. Raises DecodeError for anything that cannot be decoded."""
    if preprocessing.resize_method != RESIZE_METHOD:  # "exact" resizes with torchvision
        raise DecodeError(f"resize method {preprocessing.resize_method!r} needs torchvision")
    if is_stream_url(path):
        with tempfile.TemporaryDirectory(prefix="crif-edge-") as folder:
            recording = record_stream(str(path), Path(folder) / "stream.mkv", max_seconds)
            yield from iter_clips(str(recording), preprocessing, decoder=decoder)
        return
    limit = math.inf if max_seconds is None else max_seconds
    with ClipStream(str(path), preprocessing, decoder, allowed=TORCH_FREE) as stream:
        for _, _, plan, clip in stream:
            if plan.start_time >= limit:
                break
            yield plan, clip
