"""Videos -> preprocessed uint8 clips with PyAV and numpy only (no torch, no decord).

    for plan, clip in iter_clips("video.mp4", preprocessing):   # clip: (L, crop, crop, 3)
        ...
    for plan, clip in iter_clips("rtsp://camera/stream", preprocessing, max_seconds=60):
        ...

The clips equal the batch pipeline's (pipeline.ingest.decode with feature_extractors.s3d):
the same clip plan (resampling to the recorded fps by the nearest native frame, clips every
clip_stride sampled frames, a padded tail) and the same resize: FFmpeg's bilinear scaler
(decord scales with it while decoding; here a PyAV filter graph does), then a centre crop.
Frames are read in one forward pass, so a stream with no end works as well as a file; the
plan is made as frames arrive (:class:`ClipPlanner`), and at most one clip's frames are
held. Only the frames a clip needs are scaled.

Known difference: decord bundles an older FFmpeg than PyAV's wheels. Decoded frames are
identical, but the two scalers can round differently when a side shrinks (e.g. 340 -> 256
wide): a few pixel values differ by 1-2 levels. NOTES/README give the measured numbers.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from pipeline.edge.metadata import Preprocessing

__all__ = [
    "STREAM_SCHEMES",
    "ClipPlan",
    "ClipPlanner",
    "DecodeError",
    "is_stream_url",
    "iter_clips",
]

# Network sources PyAV opens itself (the rest go through pipeline.ingest.sources.open_input).
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "hls")
MAX_PIXELS = 7680 * 4320  # as the batch pipeline: larger frames are refused before decoding
MIN_FRAMES = 2


class DecodeError(RuntimeError):
    """A video that cannot be decoded; the message becomes the row's error."""


@dataclass(frozen=True)
class ClipPlan:
    """One clip: the native frame index of each of its frames, the time span, padding."""

    frame_indices: tuple[int, ...]
    start_time: float
    end_time: float
    padded: int


class ClipPlanner:
    """The clip plan of ``feature_extractors.s3d.plan_clips``, made while frames arrive.

    ``wanted(i)``: how many sampled frames native frame ``i`` gives (0 = skip it);
    ``ready(seen)`` the full clips that can be cut now; ``finish(num_frames)`` the rest once the
    count is known. Each plan lists positions into the sampled frames (``sampled``) and the
    native indices. A test checks it against plan_clips for many lengths and rates.
    """

    def __init__(self, native_fps: float, fps: float, clip_len: int, clip_stride: int):
        if not native_fps > 0:
            raise DecodeError(f"invalid frame rate {native_fps}")
        self.native_fps, self.fps = native_fps, fps
        self.clip_len, self.clip_stride = clip_len, clip_stride
        self.sampled: list[int] = []  # native index of each sampled frame so far
        self.next_start = 0  # sampled position where the next clip starts
        self.emitted = 0

    def target(self, k: int) -> int:
        """The native frame nearest to sampled frame k (round half up), before clamping."""
        return math.floor(k * self.native_fps / self.fps + 0.5)

    def wanted(self, index: int) -> int:
        count = 0
        while self.target(len(self.sampled)) == index:
            self.sampled.append(index)
            count += 1
        return count

    def ready(self, seen: int) -> list[tuple[int, ClipPlan]]:
        """Full clips that ``seen`` native frames complete (and whose end time they reach,
        so that end_time needs no capping at the video's duration)."""
        plans = []
        while len(self.sampled) >= self.next_start + self.clip_len and (
            seen / self.native_fps >= (self.next_start + self.clip_len) / self.fps
        ):
            plans.append(self._plan(self.next_start, self.clip_len, self.sampled))
        return plans

    def finish(self, num_frames: int) -> list[tuple[int, ClipPlan]]:
        """The remaining clips once the video has ``num_frames`` frames."""
        if num_frames <= 0:
            raise DecodeError(f"cannot plan clips for a video with {num_frames} frames")
        duration = num_frames / self.native_fps
        num_sampled = max(1, math.ceil(duration * self.fps - 1e-9))
        sampled = [min(num_frames - 1, index) for index in self.sampled[:num_sampled]]
        sampled += [num_frames - 1] * (num_sampled - len(sampled))  # clamped to the last frame
        self.sampled = sampled
        plans = []
        while self.next_start < num_sampled:
            start = self.next_start
            real = min(self.clip_len, num_sampled - start)
            previous_end = start - self.clip_stride + self.clip_len
            if self.emitted and real < self.clip_len and num_sampled <= previous_end:
                break  # a tail with nothing new
            plans.append(self._plan(start, real, sampled, duration))
        return plans

    def _plan(self, start: int, real: int, sampled: list[int], duration: float | None = None):
        positions = list(range(start, start + real))
        positions += [positions[-1]] * (self.clip_len - real)
        end = (start + real) / self.fps
        plan = ClipPlan(
            frame_indices=tuple(sampled[p] for p in positions),
            start_time=start / self.fps,
            end_time=end if duration is None else min(end, duration),
            padded=self.clip_len - real,
        )
        self.next_start += self.clip_stride
        self.emitted += 1
        return start, (positions, plan)


def is_stream_url(path: str) -> bool:
    scheme, separator, _ = str(path).partition("://")
    return bool(separator) and scheme.lower() in STREAM_SCHEMES


@contextmanager
def _container(path: str):
    """An open PyAV container for a local file, a stream URL, a URI or an archive member."""
    import av

    path = str(path)
    try:
        if is_stream_url(path):
            container = av.open(path, timeout=30)
        elif "::" in path or "://" in path and not path.startswith("file://"):
            from pipeline.ingest.sources import open_input  # pyarrow filesystems, tar members

            with open_input(path) as handle:
                data = handle.read()
            if not data:
                raise DecodeError("empty file (0 bytes)")
            container = av.open(io.BytesIO(data))
        else:
            local = path.removeprefix("file://")
            if not os.path.isfile(local):
                raise DecodeError(f"file not found: {local}")
            if os.path.getsize(local) == 0:
                raise DecodeError("empty file (0 bytes)")
            container = av.open(local)
    except DecodeError:
        raise
    except Exception as error:  # av.error.*, OSError: the message is what the row records
        raise DecodeError(f"not a decodable video: {_first_line(error)}") from error
    with container:
        yield container


class _Scaler:
    """FFmpeg's bilinear scaler to (H, W) and RGB, as decord's decode-time scaling."""

    def __init__(self, stream, size: tuple[int, int]):
        import av

        self.graph = av.filter.Graph()
        source = self.graph.add_buffer(template=stream)
        scale = self.graph.add("scale", f"{size[1]}:{size[0]}:flags=bilinear")
        rgb = self.graph.add("format", "rgb24")
        sink = self.graph.add("buffersink")
        source.link_to(scale)
        scale.link_to(rgb)
        rgb.link_to(sink)
        self.graph.configure()

    def __call__(self, frame) -> np.ndarray:
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()  # (H, W, 3) uint8


def _centre_crop(image: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's center_crop offsets: round((size - crop) / 2)."""
    height, width = image.shape[:2]
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return image[top : top + crop, left : left + crop]


def iter_clips(
    path: str, preprocessing: Preprocessing, *, max_seconds: float | None = None
) -> Iterator[tuple[ClipPlan, np.ndarray]]:
    """Yield ``(plan, clip)`` per clip: uint8 (clip_len, crop, crop, 3), preprocessed.

    ``max_seconds``: stop after that much video (a live stream); the rest is planned as the
    end of the video. Raises DecodeError for anything that cannot be decoded.
    """
    with _container(path) as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if width * height > MAX_PIXELS:
            raise DecodeError(f"resolution {width}x{height} exceeds the limit of {MAX_PIXELS}")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        native_fps = float(rate) if rate else 0.0
        planner = ClipPlanner(
            native_fps, preprocessing.fps, preprocessing.clip_len, preprocessing.clip_stride
        )
        scaler = _Scaler(stream, preprocessing.resize)
        frames: dict[int, np.ndarray] = {}  # sampled position -> cropped frame
        last = None  # the last native frame (decoded, not yet scaled): clamped tail samples
        count = 0
        limit = None if max_seconds is None else math.ceil(max_seconds * native_fps)
        try:
            for frame in container.decode(stream):
                if limit is not None and count >= limit:
                    break
                copies = planner.wanted(count)
                if copies:
                    image = _centre_crop(scaler(frame), preprocessing.crop)
                    for position in range(len(planner.sampled) - copies, len(planner.sampled)):
                        frames[position] = image
                last, count = frame, count + 1
                for _, (positions, plan) in planner.ready(count):
                    yield plan, _take(frames, positions)
                    _forget(frames, planner.next_start)
        except DecodeError:
            raise
        except Exception as error:
            raise DecodeError(f"decoding failed at frame {count}: {_first_line(error)}") from error
        if count < MIN_FRAMES:
            raise DecodeError(f"too short: {count} frame(s), need at least {MIN_FRAMES}")
        known = len(planner.sampled)
        tail = planner.finish(count)
        if len(planner.sampled) > known:  # sampled frames past the end: the last frame
            image = _centre_crop(scaler(last), preprocessing.crop)
            for position in range(known, len(planner.sampled)):
                frames[position] = image
        for _, (positions, plan) in tail:
            yield plan, _take(frames, positions)


def _take(frames: dict[int, np.ndarray], positions: list[int]) -> np.ndarray:
    return np.stack([frames[position] for position in positions])


def _forget(frames: dict[int, np.ndarray], keep_from: int) -> None:
    for position in [p for p in frames if p < keep_from]:
        del frames[position]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
