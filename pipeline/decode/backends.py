"""Video decoder backends behind one interface: pyav, decord and torchcodec.

    reader = open_reader("pyav", "video.mp4", size=(256, 256), threads=1)
    reader.info.times          # (N,) presentation times in seconds from the first frame
    frames = reader.frames([0, 2, 4])   # uint8 (3, 256, 256, 3), upright
    reader.close()

Every backend gives the same thing: the frames' real presentation times (constant or variable
frame rate alike), and upright RGB frames (the track's display-matrix rotation applied, and
recorded in ``info.rotation``), at ``size`` = (height, width) scaled inside FFmpeg (decoder
scaling), or at the native size when ``size`` is None. Indices are positions in
presentation order; ``frames`` takes them sorted and unique.

- ``pyav``: the FFmpeg of PyAV's wheel (dav1d for AV1, VP9, HEVC, MJPEG, ProRes, MPEG-TS...).
  Frame times come from a demux-only scan (no decoding); frames are decoded forward and the
  decoder seeks to a clip's keyframe only when the clip is behind or past the next keyframe.
  Packets that do not decode are skipped: a frame the container claims but cannot deliver is
  replaced by the nearest earlier decoded one (never a stall).
- ``decord``: decord 0.6 (FFmpeg 4). It applies the rotation itself; a frame it returns in a
  wrong shape (it does for some rotated sizes) is refused, so ``auto`` moves on.
- ``torchcodec``: the optional extra (``pip install .[torchcodec]``, needs the system's
  FFmpeg libraries); CPU, or ``cuda`` (NVDEC) with ``device``. Frames are looked up by the
  presentation times of the pyav scan, so plans are the same as pyav's.
"""

from __future__ import annotations

import abc
import io
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "TORCH_FREE",
    "MAX_PIXELS",
    "MIN_FRAMES",
    "DecodeError",
    "VideoInfo",
    "VideoReader",
    "available_backends",
    "backend_candidates",
    "first_line",
    "open_reader",
    "open_source",
    "rgb_frame",
]

# 8K UHD: anything larger is refused before decoding a frame (a decoded frame of a
# hostile 30000x30000 file would need gigabytes).
MAX_PIXELS = 7680 * 4320
# Fewer decodable frames than this is "too short" to be a video.
MIN_FRAMES = 2
# `auto` tries the installed backends in this order, fastest first (benchmarks/decoders.py).
AUTO_ORDER = ("torchcodec", "pyav", "decord")
# The backends that never import torch (torchcodec does): what a torch-free runtime may use.
TORCH_FREE = ("pyav", "decord")
# Gaps differing from their median by more than this make a video "variable rate".
_VARIABLE_GAP = 0.1


class DecodeError(RuntimeError):
    """A video or audio track could not be decoded; the message is recorded as a failure."""


@dataclass(frozen=True)
class VideoInfo:
    """What a backend found: sizes upright (after rotation), times in seconds."""

    backend: str
    codec: str
    width: int
    height: int
    rotation: int  # degrees counter-clockwise applied to the stored pixels (0, 90, 180, 270)
    times: tuple[float, ...]  # presentation times from the first frame, increasing
    duration: float  # the last frame's end

    @property
    def num_frames(self) -> int:
        return len(self.times)

    @property
    def fps(self) -> float:
        """Average rate: frames over duration."""
        return self.num_frames / self.duration if self.duration > 0 else 0.0

    @property
    def variable_rate(self) -> bool:
        gaps = np.diff(self.times)
        if len(gaps) < 2:
            return False
        median = float(np.median(gaps))
        return bool(np.abs(gaps - median).max() > _VARIABLE_GAP * median)

    def record(self) -> dict:
        """The per-video decode record (no frame times)."""
        record = asdict(self)
        del record["times"]
        return {**record, "frames": self.num_frames, "variable_rate": self.variable_rate}


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _is_local(path: str) -> bool:
    return "::" not in path and "://" not in path or path.startswith("file://")


@contextmanager
def open_source(path: str):
    """A local filename as is (decoders stream it), anything else as an in-memory file."""
    if _is_local(path):
        local = path[len("file://") :] if path.startswith("file://") else path
        if not os.path.exists(local):
            raise DecodeError(f"file not found: {local}")
        if os.path.isfile(local) and os.path.getsize(local) == 0:
            raise DecodeError("empty file (0 bytes)")
        yield local
        return
    from pipeline.ingest.sources import open_input

    with open_input(path) as handle:
        data = handle.read()
    if not data:
        raise DecodeError("empty file (0 bytes)")
    yield io.BytesIO(data)


def _rewound(source):
    if isinstance(source, io.BytesIO):
        source.seek(0)
    return source


class VideoReader(abc.ABC):
    """One opened video. ``frames(indices)``: uint8 (N, H, W, 3) upright RGB."""

    name: ClassVar[str]
    info: VideoInfo

    @abc.abstractmethod
    def frames(self, indices: list[int]) -> np.ndarray: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise DecodeError(f"resolution {width}x{height} exceeds the limit of {MAX_PIXELS} pixels")


def _upright(array: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(array, k=rotation // 90)) if rotation else array


def _duration(times: np.ndarray, last_duration: float) -> float:
    gaps = np.diff(times)
    tail = last_duration if last_duration > 0 else (float(np.median(gaps)) if len(gaps) else 0.0)
    return float(times[-1] + tail) if len(times) else 0.0


# ---------------------------------------------------------------------------------- pyav


def rgb_frame(reformatter, frame, size: tuple[int, int] | None, rotation: int) -> np.ndarray:
    """A decoded PyAV frame -> upright uint8 (H, W, 3) RGB at ``size`` (height, width; None:
    native), scaled by FFmpeg's bilinear while converting: the decoder scaling of every pyav
    reader (files here, live streams in pipeline.serve), so their frames are the same."""
    width, height = frame.width, frame.height
    if size is not None:
        height, width = size
        if rotation in (90, 270):
            width, height = height, width
    converted = reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation="BILINEAR"
    )
    return _upright(converted.to_ndarray(), rotation)


@dataclass(frozen=True)
class _Scan:
    pts: np.ndarray  # (N,) int64 presentation timestamps, sorted (stream time base)
    keyframes: np.ndarray  # indices of keyframes, sorted
    time_base: float
    last_duration: float  # seconds
    ordered: bool  # pts were present: frames can be found by pts (and seeked to)


def scan_stream(source) -> tuple[_Scan, dict]:
    """Demux the first video stream without decoding: every packet's pts and keyframe flag."""
    import av

    try:
        container = av.open(_rewound(source), metadata_errors="ignore")
    except Exception as error:
        raise DecodeError(f"not a decodable video: {first_line(error)}") from error
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        _check_size(int(context.width or 0), int(context.height or 0))
        meta = {
            "codec": context.name,
            "rate": float(stream.average_rate or 0) or None,
            "size": (int(context.width or 0), int(context.height or 0)),
        }
        stamps, keys, durations = [], [], []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                stamps.append(stamp)
                keys.append(packet.is_keyframe)
                durations.append(packet.duration or 0)
        except av.error.FFmpegError:
            pass  # a truncated or damaged tail: plan from what demuxes
        time_base = float(stream.time_base)
    ordered = bool(stamps) and all(stamp is not None for stamp in stamps)
    if ordered:
        order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
        pts = np.asarray(stamps, np.int64)[order]
        keep = np.concatenate([[True], np.diff(pts) > 0])  # repeated pts: one frame
        index_of = np.cumsum(keep) - 1
        keyframes = np.unique(index_of[np.asarray(keys, bool)[order]])
        pts, last = pts[keep], durations[order[-1]] * time_base
    else:  # no timestamps (raw streams): frames in decode order at the stream's rate
        rate = meta["rate"] or 25.0
        time_base, pts = 1.0 / rate, np.arange(len(stamps), dtype=np.int64)
        keyframes, last = np.zeros(1, np.int64), 1.0 / rate
    return _Scan(pts, keyframes, time_base, float(last), ordered), meta


class PyAVReader(VideoReader):
    name = "pyav"

    def __init__(self, source, size: tuple[int, int] | None, threads: int = 1):
        import av
        from av.video.reformatter import VideoReformatter

        self._av, self._source, self._size, self._threads = av, source, size, threads
        # One reformatter for every frame: it keeps its scaler context (a new one per frame,
        # as frame.to_ndarray(width=...) makes, costs 6x the conversion).
        self._reformatter = VideoReformatter()
        self._scan, meta = scan_stream(source)
        if len(self._scan.pts) < MIN_FRAMES:
            raise DecodeError(
                f"too short: {len(self._scan.pts)} frame(s), need at least {MIN_FRAMES}"
            )
        self._index = {int(stamp): i for i, stamp in enumerate(self._scan.pts)}
        self._seekable = self._scan.ordered
        self._container = None
        self._open()
        first = self._next()  # validates that frames decode; gives rotation and size
        if first is None:
            raise DecodeError("no frame decodes")
        self._rotation = int(getattr(first[1], "rotation", 0) or 0) % 360
        width, height = first[1].width, first[1].height
        if self._rotation in (90, 270):
            width, height = height, width
        times = (self._scan.pts - self._scan.pts[0]) * self._scan.time_base
        self.info = VideoInfo(
            backend=self.name,
            codec=meta["codec"],
            width=int(width),
            height=int(height),
            rotation=self._rotation,
            times=tuple(float(t) for t in times),
            duration=_duration(times, self._scan.last_duration),
        )
        self._current = first  # (index, frame): the last frame decoded

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._av.open(_rewound(self._source), metadata_errors="ignore")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self._threads
        self._decoded = self._frames()
        self._counter = -1
        self._current = None

    def _frames(self):
        """Decoded frames in presentation order; undecodable packets are skipped."""
        demuxed = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                return
            except self._av.error.FFmpegError:  # a damaged tail: flush what was decoded
                packet = None
            try:
                frames = self._stream.codec_context.decode(packet)
            except self._av.error.FFmpegError:
                continue
            yield from frames
            if packet is None:
                return

    def _next(self) -> tuple[int, object] | None:
        frame = next(self._decoded, None)
        if frame is None:
            return None
        self._counter += 1
        if not self._scan.ordered or frame.pts is None:
            return self._counter, frame
        index = self._index.get(int(frame.pts))
        if index is None:  # a pts the scan did not see: the nearest one at or before it
            index = max(0, int(np.searchsorted(self._scan.pts, frame.pts, side="right")) - 1)
        return index, frame

    def _seek(self, target: int) -> None:
        if not self._seekable:
            self._open()
            return
        try:
            self._container.seek(
                int(self._scan.pts[target]), stream=self._stream, backward=True, any_frame=False
            )
        except self._av.error.FFmpegError:
            self._seekable = False
            self._open()
            return
        self._decoded = self._frames()
        self._current = None

    def _convert(self, frame) -> np.ndarray:
        return rgb_frame(self._reformatter, frame, self._size, self._rotation)

    def frames(self, indices: list[int]) -> np.ndarray:
        return np.stack([self._convert(self._frame(target)) for target in indices])

    def _frame(self, target: int):
        current = self._current
        if current is not None and current[0] == target:
            return current[1]
        next_key = self._scan.keyframes[np.searchsorted(self._scan.keyframes, target, "right") - 1]
        if current is None or target < current[0] or (self._seekable and next_key > current[0] + 1):
            self._seek(target)
            current, after_seek = None, True
        else:
            after_seek = False
        while True:
            decoded = self._next()
            if decoded is None:  # the end: frames claimed but not delivered
                if current is None:
                    raise DecodeError(f"no frame decodes at or after frame {target}")
                return current[1]
            if after_seek and decoded[0] > target and self._seekable:
                # The seek landed past the target (inexact seeking, e.g. MPEG-TS): decode
                # from the start from now on.
                self._seekable = False
                self._open()
                after_seek = False
                continue
            after_seek = False
            if decoded[0] >= target:
                self._current = decoded
                if decoded[0] == target or current is None:
                    return decoded[1]
                return current[1]  # the target never decoded: the frame shown before it
            current = decoded

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


# -------------------------------------------------------------------------------- decord


class DecordReader(VideoReader):
    name = "decord"

    def __init__(self, source, size: tuple[int, int] | None, threads: int = 1):
        import decord

        scan, meta = scan_stream(source)  # the size limit, before decord allocates anything
        del scan
        height, width = size if size is not None else (-1, -1)
        try:
            self._reader = decord.VideoReader(
                _rewound(source), width=width, height=height, num_threads=threads
            )
        except Exception as error:  # decord raises a bare RuntimeError/DECORDError
            raise DecodeError(f"not a decodable video: {first_line(error)}") from error
        if len(self._reader) < MIN_FRAMES:
            raise DecodeError(
                f"too short: {len(self._reader)} frame(s), need at least {MIN_FRAMES}"
            )
        try:
            stamps = self._reader.get_frame_timestamp(np.arange(len(self._reader)))
            first = self._reader[0].asnumpy()
        except Exception as error:
            raise DecodeError(f"not a decodable video: {first_line(error)}") from error
        self._shape = first.shape
        if first.ndim != 3 or first.shape[2] != 3:
            raise DecodeError(f"decord returned frames of shape {first.shape} (rotated video)")
        times = stamps[:, 0] - stamps[0, 0]
        rotation = _rotation_of(source)
        width, height = meta["size"][:: -1 if rotation in (90, 270) else 1]
        self.info = VideoInfo(
            backend=self.name,
            codec=meta["codec"],
            width=width,
            height=height,
            rotation=rotation,
            times=tuple(float(t) for t in times),
            duration=float(stamps[-1, 1] - stamps[0, 0]),
        )

    def frames(self, indices: list[int]) -> np.ndarray:
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as error:
            raise DecodeError(
                f"decoding frames {indices[0]}-{indices[-1]} failed: {first_line(error)}"
            ) from error
        if frames.shape[1:] != self._shape:
            raise DecodeError(f"decord returned frames of shape {frames.shape[1:]}")
        return frames


def _rotation_of(source) -> int:
    """The display-matrix rotation (degrees counter-clockwise) of the first decoded frame."""
    import av

    with av.open(_rewound(source), metadata_errors="ignore") as container:
        for frame in container.decode(video=0):
            return int(getattr(frame, "rotation", 0) or 0) % 360
    return 0


# ---------------------------------------------------------------------------- torchcodec


class TorchCodecReader(VideoReader):
    """torchcodec's VideoDecoder (CPU or CUDA), frames looked up by the pyav scan's times."""

    name = "torchcodec"

    def __init__(self, source, size, threads: int = 1, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        probe = PyAVReader(source, size=(8, 8))  # times, rotation; one frame decoded
        self._begin = float(probe._scan.pts[0] * probe._scan.time_base)
        times, rotation = np.asarray(probe.info.times), probe.info.rotation
        probe.close()
        try:
            self._decoder = VideoDecoder(
                _rewound(source) if not isinstance(source, io.BytesIO) else source.getvalue(),
                dimension_order="NHWC",
                num_ffmpeg_threads=threads,
                device=device,
                seek_mode="exact",
            )
        except Exception as error:
            raise DecodeError(f"not a decodable video: {first_line(error)}") from error
        self._times, self._size = times, size
        metadata = self._decoder.metadata
        width, height = int(metadata.width), int(metadata.height)
        first = self._decode([0])[0]
        # torchcodec versions that apply the rotation themselves return upright shapes.
        self._rotate = rotation if first.shape[:2] == (height, width) else 0
        if rotation in (90, 270):
            width, height = height, width
        self.info = VideoInfo(
            backend=self.name,
            codec=str(getattr(metadata, "codec", "") or ""),
            width=width,
            height=height,
            rotation=rotation,
            times=tuple(float(t) for t in times),
            duration=probe.info.duration,
        )

    def _decode(self, indices: list[int]) -> np.ndarray:
        seconds = [self._begin + float(self._times[i]) for i in indices]
        try:
            batch = self._decoder.get_frames_played_at(seconds=seconds)
        except Exception as error:
            raise DecodeError(f"decoding failed: {first_line(error)}") from error
        return batch.data.cpu().numpy()  # (N, H, W, 3) uint8

    def frames(self, indices: list[int]) -> np.ndarray:
        frames = [_upright(frame, self._rotate) for frame in self._decode(indices)]
        frames = np.stack(frames)
        if self._size is not None and frames.shape[1:3] != tuple(self._size):
            import torch
            from torchvision.transforms.v2 import functional as vision_functional

            images = torch.from_numpy(frames).permute(0, 3, 1, 2)
            images = vision_functional.resize(images, list(self._size), antialias=False)
            frames = images.permute(0, 2, 3, 1).contiguous().numpy()
        return frames


# ------------------------------------------------------------------------------- registry


BACKENDS: dict[str, type[VideoReader]] = {
    "pyav": PyAVReader,
    "decord": DecordReader,
    "torchcodec": TorchCodecReader,
}
_IMPORTS = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec.decoders"}


def _importable(backend: str) -> str | None:
    """None when the backend's package imports, else why not."""
    import importlib

    try:
        importlib.import_module(_IMPORTS[backend])
    except Exception as error:  # ImportError, or torchcodec's OSError without FFmpeg libs
        return first_line(error)
    return None


def available_backends() -> dict[str, str | None]:
    """backend -> None when installed and importable, else the reason it is not."""
    return {backend: _importable(backend) for backend in BACKENDS}


def backend_candidates(decoder: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """The backends to try, in order, for a decoder policy (auto: installed ones, fastest
    first, of ``allowed`` when given); a named backend that is not installed (or not
    allowed) is an error."""
    if decoder == "auto":
        order = [name for name in AUTO_ORDER if allowed is None or name in allowed]
        return [name for name in order if _importable(name) is None]
    if decoder not in BACKENDS or allowed is not None and decoder not in allowed:
        names = sorted(BACKENDS if allowed is None else allowed)
        raise ValueError(f"decoder must be auto or one of {names}, got {decoder!r}")
    reason = _importable(decoder)
    if reason is not None:
        raise DecodeError(f"decoder {decoder!r} is not installed: {reason}")
    return [decoder]


def open_reader(
    backend: str, source, size: tuple[int, int] | None, threads: int = 1, device: str = "cpu"
) -> VideoReader:
    """Open ``source`` (a local path or an in-memory file) with one backend."""
    if backend == "torchcodec":
        return TorchCodecReader(source, size, threads, device=device)
    return BACKENDS[backend](source, size, threads)
