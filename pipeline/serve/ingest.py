"""One live stream -> sliding windows of S3D clips -> predictions, with reconnects and drops.

    ingest = StreamIngest("cam1", "udp://127.0.0.1:5000", settings, score=model_call)
    ingest.start()
    ingest.status()            # {"state": "streaming", "windows_scored": 12, ...}
    ingest.predictions(after=-1)
    ingest.stop()

A decode thread reads the stream with PyAV (FFmpeg: RTSP, RTP, UDP MPEG-TS, HTTP(S), HLS,
SRT) under FFmpeg's protocol whitelist, converts frames with the pyav readers' own decoder
scaling (``pipeline.decode.backends.rgb_frame``), resamples them to the S3D rate by their
presentation times with the nearest-frame rule of ``feature_extractors.clip_plan.plan_clips_at``
(:class:`FrameSampler`), and cuts windows of ``clip_len`` sampled frames every ``hop``
(:class:`WindowCutter`); a window is centre-cropped by ``preprocess_frames``, the function
every batch clip goes through. So a window's clip is what ``jobs/score.py`` makes of a file
holding the window's frames at the S3D rate.

A scorer thread sends one window at a time to the model (a Serve handle call that batches
across streams). Windows wait in a queue of ``max_pending``; when the model is behind, the
oldest waiting window is dropped whole and counted, so the delay from a window's end to its
prediction stays bounded (never frames inside a window). A stream that ends or fails is
reopened with exponential backoff (state ``reconnecting``, counted); a stream larger than
the pixel limit is ``failed`` for good. Stream time restarts at each connection's first frame
and continues from the previous connection's end (``segment`` counts the connections that
gave frames); a window never spans two segments.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.decode.backends import first_line, rgb_frame
from pipeline.serve.security import MAX_PIXELS, PROTOCOL_WHITELIST, redact_url

__all__ = [
    "STATES",
    "FrameSampler",
    "IngestActor",
    "IngestSettings",
    "StreamIngest",
    "Window",
    "WindowCutter",
    "WindowInputs",
    "percentile",
    "write_window",
]

logger = logging.getLogger(__name__)

STATES = ("connecting", "streaming", "reconnecting", "failed", "stopped")
_TOLERANCE = 1e-9  # plan_clips_at's tie tolerance


@dataclass(frozen=True)
class WindowInputs:
    """The model's S3D clip inputs (its recorded ClipInputs, without importing torch)."""

    fps: float
    resize: tuple[int, int]
    crop: int
    clip_len: int
    resize_method: str = "decoder"

    @classmethod
    def of(cls, clip_inputs) -> WindowInputs:
        return cls(
            fps=float(clip_inputs.fps),
            resize=tuple(clip_inputs.resize),
            crop=int(clip_inputs.crop),
            clip_len=int(clip_inputs.clip_len),
            resize_method=clip_inputs.resize_method,
        )


@dataclass(frozen=True)
class IngestSettings:
    """How a stream becomes windows."""

    inputs: WindowInputs
    hop: int  # sampled frames between window starts
    max_pending: int = 1  # windows waiting for the model before the oldest is dropped
    max_pixels: int = MAX_PIXELS
    open_timeout: float = 30.0  # seconds to open a stream (RTSP listen: to be published to)
    read_timeout: float = 10.0  # seconds without data before the stream counts as dropped
    max_gap: float = 2.0  # a pause longer than this (s) starts a new segment
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    keep_predictions: int = 1000
    record_dir: str | None = None  # write each scored window's frames here (lossless)
    listen: bool = False  # RTSP: wait for the camera to publish to the URL (FFmpeg listen)


@dataclass
class Window:
    index: int
    segment: int
    start: float  # stream seconds of its first sampled frame
    end: float  # stream seconds of its last sampled frame's end
    frames: np.ndarray  # uint8 (clip_len, H, W, 3) at the decoder size, before the crop
    received_at: float  # wall time (time.time) its last frame was decoded


class FrameSampler:
    """Frames at presentation times (s from the segment's first frame) -> frames at k / fps.

    Incremental form of plan_clips_at's resampling: target k takes the frame nearest to
    k / fps, the later one on a tie. ``push`` returns the (k, item) pairs a frame settles.
    """

    def __init__(self, fps: float):
        self.fps, self.next_k, self.previous = fps, 0, None  # previous: (time, item)

    def push(self, time_s: float, item) -> list[tuple[int, object]]:
        settled = []
        while True:
            target = self.next_k / self.fps
            if target - _TOLERANCE > time_s:
                break
            if self.previous is None:
                chosen = item
            else:
                before, previous = self.previous
                later = time_s - target <= target - before + _TOLERANCE
                chosen = item if later else previous
            settled.append((self.next_k, chosen))
            self.next_k += 1
        self.previous = (time_s, item)
        return settled


class WindowCutter:
    """Sampled frames k = 0, 1, ... -> windows of ``clip_len`` frames starting every ``hop``."""

    def __init__(self, clip_len: int, hop: int):
        self.clip_len, self.hop = clip_len, hop
        self.next_start = 0
        self.buffer: collections.deque = collections.deque()

    def push(self, k: int, frame: np.ndarray) -> tuple[int, list[np.ndarray]] | None:
        if k < self.next_start:
            return None
        self.buffer.append(frame)
        if len(self.buffer) < self.clip_len:
            return None
        start, frames = self.next_start, list(self.buffer)
        self.next_start += self.hop
        for _ in range(min(self.hop, len(self.buffer))):
            self.buffer.popleft()
        return start, frames


class _LazyRGB:
    """A decoded frame converted to RGB only if a sampled frame takes it (once)."""

    __slots__ = ("frame", "convert", "_rgb")

    def __init__(self, frame, convert):
        self.frame, self.convert, self._rgb = frame, convert, None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.convert(self.frame)
            self.frame = None
        return self._rgb


class _Pending:
    """A bounded hand-off: ``put`` drops (and returns) the oldest window when full."""

    def __init__(self, size: int):
        self.items: collections.deque = collections.deque()
        self.size = max(1, size)
        self.condition = threading.Condition()

    def put(self, item) -> object | None:
        with self.condition:
            dropped = self.items.popleft() if len(self.items) >= self.size else None
            self.items.append(item)
            self.condition.notify()
            return dropped

    def get(self, timeout: float):
        with self.condition:
            if not self.items:
                self.condition.wait(timeout)
            return self.items.popleft() if self.items else None

    def clear(self) -> int:
        with self.condition:
            count = len(self.items)
            self.items.clear()
            return count


class StreamFailed(RuntimeError):
    """A stream the service will not retry (too large)."""


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


@dataclass
class _Stats:
    frames_decoded: int = 0
    windows_made: int = 0
    windows_scored: int = 0
    windows_dropped: int = 0
    windows_failed: int = 0
    reconnects: int = 0
    segments: int = 0
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=500))
    scored_at: collections.deque = field(default_factory=lambda: collections.deque(maxlen=500))


class StreamIngest:
    """The decode and scorer threads of one camera (module docstring).

    ``score(clip)`` -> dict with ``probabilities`` etc. (the model's answer for one window);
    ``metrics``: an object with ``scored(latency)``, ``dropped()``, ``reconnected()``,
    ``state(name)`` (pipeline.serve.metrics.StreamMetrics) or None.
    """

    def __init__(
        self,
        camera: str,
        url: str,
        settings: IngestSettings,
        score: Callable[[np.ndarray], dict],
        metrics=None,
    ):
        self.camera, self.url, self.settings, self.score = camera, url, settings, score
        self.metrics = metrics
        self.state, self.last_error, self.state_since = "connecting", None, time.time()
        self.stats = _Stats()
        self.predictions: collections.deque = collections.deque(maxlen=settings.keep_predictions)
        self.new_prediction = threading.Condition()
        self.pending = _Pending(settings.max_pending)
        self.stopping = threading.Event()
        self.size_info: dict = {}
        # next window index; stream seconds where the current segment starts; sampled frames
        # of the current segment (its length, added to start when the next segment begins)
        self._position = {"window": 0, "start": 0.0, "next_k": 0}
        self._produced = False
        self.replicas: dict[str, dict] = {}
        self._threads = [
            threading.Thread(target=self._decode_loop, name=f"decode-{camera}", daemon=True),
            threading.Thread(target=self._score_loop, name=f"score-{camera}", daemon=True),
        ]

    # ---------------------------------------------------------------------------- control

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with self.pending.condition:
            self.pending.condition.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._set_state("stopped")

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.state_since = state, time.time()
            if self.metrics is not None:
                self.metrics.state(state)
        if error is not None:
            self.last_error = error

    # ---------------------------------------------------------------------------- decode

    def _decode_loop(self) -> None:
        delay = self.settings.backoff_initial
        while not self.stopping.is_set():
            try:
                produced = self._read()
                error = "the stream ended"
            except StreamFailed as failure:
                self._set_state("failed", str(failure))
                return
            except Exception as failure:  # noqa: BLE001 - any drop is retried
                produced, error = self._produced, self._drop_reason(failure)
            if self.stopping.is_set():
                return
            self.stats.reconnects += 1
            if self.metrics is not None:
                self.metrics.reconnected()
            self._set_state("reconnecting", error)
            logger.info(f"[serve] {self.camera}: {error}; reconnecting in {delay:.1f} s")
            delay = self.settings.backoff_initial if produced else delay
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, self.settings.backoff_max)

    def _drop_reason(self, failure: Exception) -> str:
        """Why a connection ended, in words: PyAV's timeouts interrupt FFmpeg, which then
        reports only "Immediate exit requested"."""
        import av

        if isinstance(failure, av.ExitError):
            opening = self.settings.open_timeout + 5  # _open's timeouts
            limit = self.settings.read_timeout if self._produced else opening
            return f"no data for {limit:g} s (timeout)"
        return first_line(failure)

    def _open(self):
        import av

        options = {"protocol_whitelist": PROTOCOL_WHITELIST}
        scheme = self.url.partition("://")[0].lower()
        if scheme == "udp":  # a slow reader must not kill the stream; ~9 MB socket FIFO
            options.update(overrun_nonfatal="1", fifo_size="50000")
        if scheme in ("rtsp", "rtsps") and self.settings.listen:
            options.update(rtsp_flags="listen", listen_timeout=str(int(self.settings.open_timeout)))
        timeout = (self.settings.open_timeout + 5, self.settings.read_timeout)
        return av.open(self.url, options=options, timeout=timeout, metadata_errors="ignore")

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.settings.max_pixels:
            raise StreamFailed(
                f"resolution {width}x{height} exceeds the limit of "
                f"{self.settings.max_pixels} pixels"
            )

    def _read(self) -> bool:
        """One connection: decode until the stream ends, fails (raises) or is stopped; whether
        frames came. Window numbers and stream time go on across connections (``_position``,
        kept up to date even when the connection fails)."""
        from av.video.reformatter import VideoReformatter

        from feature_extractors.clip_plan import preprocess_frames
        from pipeline.decode.clips import decode_size

        inputs = self.settings.inputs
        size = decode_size(inputs)
        reformatter = VideoReformatter()
        self._produced = False
        position = self._position  # next window index, stream seconds of the next segment
        with self._open() as container:
            if not container.streams.video:
                raise RuntimeError("no video stream")
            stream = container.streams.video[0]
            self._check_size(int(stream.codec_context.width), int(stream.codec_context.height))
            stream.codec_context.thread_count = 1
            first = last = None
            sampler = cutter = None
            for frame in self._frames(container, stream):
                self._check_size(frame.width, frame.height)
                stamp = frame.time
                if stamp is None:
                    continue
                gap = None if last is None else stamp - last
                if first is None or gap < -_TOLERANCE or gap > self.settings.max_gap:
                    position["start"] += position["next_k"] / inputs.fps  # the last segment
                    first, sampler = stamp, FrameSampler(inputs.fps)
                    position["next_k"] = 0
                    cutter = WindowCutter(inputs.clip_len, self.settings.hop)
                    self.stats.segments += 1
                    self._set_state("streaming")
                    self.size_info = {"width": frame.width, "height": frame.height}
                last, self._produced = stamp, True
                self.stats.frames_decoded += 1
                rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                item = _LazyRGB(frame, lambda f, r=rotation: rgb_frame(reformatter, f, size, r))
                for k, chosen in sampler.push(stamp - first, item):
                    position["next_k"] = sampler.next_k
                    cut = cutter.push(k, chosen.rgb())
                    if cut is None:
                        continue
                    start_k, frames = cut
                    window = Window(
                        index=position["window"],
                        segment=self.stats.segments,
                        start=position["start"] + start_k / inputs.fps,
                        end=position["start"] + (start_k + inputs.clip_len) / inputs.fps,
                        frames=np.stack(frames),
                        received_at=time.time(),
                    )
                    position["window"] += 1
                    self.stats.windows_made += 1
                    if self.pending.put((window, preprocess_frames(window.frames, inputs))):
                        self._count_drop()
                if self.stopping.is_set():
                    break
        return self._produced

    def _frames(self, container, stream):
        import av

        for packet in container.demux(stream):
            if self.stopping.is_set():
                return
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                continue  # a damaged packet (lost UDP datagrams): the next keyframe recovers

    def _count_drop(self) -> None:
        self.stats.windows_dropped += 1
        if self.metrics is not None:
            self.metrics.dropped()

    # ---------------------------------------------------------------------------- score

    def _score_loop(self) -> None:
        while not self.stopping.is_set():
            entry = self.pending.get(timeout=0.5)
            if entry is None:
                continue
            window, clip = entry
            if self.settings.record_dir:
                directory = Path(self.settings.record_dir) / self.camera
                write_window(window.frames, directory / f"{window.index:06d}.mkv", self.fps)
            try:
                answer = self.score(clip)
            except Exception as failure:  # noqa: BLE001 - recorded, the stream goes on
                self.stats.windows_failed += 1
                self.last_error = f"scoring window {window.index}: {first_line(failure)}"
                continue
            latency = time.time() - window.received_at
            prediction = {
                "camera": self.camera,
                "window": window.index,
                "segment": window.segment,
                "start": round(window.start, 6),
                "end": round(window.end, 6),
                "latency_s": round(latency, 4),
                **answer,
            }
            self._record(prediction, latency)

    @property
    def fps(self) -> float:
        return self.settings.inputs.fps

    def _record(self, prediction: dict, latency: float) -> None:
        stats = self.stats
        stats.windows_scored += 1
        stats.latencies.append(latency)
        stats.scored_at.append(time.time())
        replica = self.replicas.setdefault(
            prediction.get("replica", "?"), {"windows": 0, "batch_sizes": 0, "compute_s": 0.0}
        )
        replica["windows"] += 1
        replica["batch_sizes"] += prediction.get("batch_size", 1)
        replica["compute_s"] += prediction.get("compute_s", 0.0)
        if self.metrics is not None:
            self.metrics.scored(latency)
        with self.new_prediction:
            self.predictions.append(prediction)
            self.new_prediction.notify_all()

    # ---------------------------------------------------------------------------- reading

    def predictions_after(self, after: int = -1) -> list[dict]:
        with self.new_prediction:
            return [p for p in self.predictions if p["window"] > after]

    def wait_predictions(self, after: int, timeout: float) -> list[dict]:
        """The predictions of windows after ``after``, waiting up to ``timeout`` for one."""
        deadline = time.monotonic() + timeout
        with self.new_prediction:
            while True:
                found = [p for p in self.predictions if p["window"] > after]
                left = deadline - time.monotonic()
                if found or left <= 0 or self.stopping.is_set():
                    return found
                self.new_prediction.wait(left)

    def status(self) -> dict:
        stats, now = self.stats, time.time()
        recent = [t for t in stats.scored_at if t > now - 60.0]
        span = min(60.0, now - recent[0]) if len(recent) > 1 else 0.0
        return {
            "camera": self.camera,
            "url": redact_url(self.url),
            "state": self.state,
            "state_since": round(self.state_since, 3),
            "last_error": self.last_error,
            "frames_decoded": stats.frames_decoded,
            "windows_made": stats.windows_made,
            "windows_scored": stats.windows_scored,
            "windows_dropped": stats.windows_dropped,
            "windows_failed": stats.windows_failed,
            "reconnects": stats.reconnects,
            "segments": stats.segments,
            "windows_per_s": round((len(recent) - 1) / span, 4) if span > 0 else None,
            "latency_p50_s": percentile(stats.latencies, 50),
            "latency_p95_s": percentile(stats.latencies, 95),
            "source": self.size_info,
            "replicas": {key: dict(value) for key, value in self.replicas.items()},
        }


def write_window(frames: np.ndarray, path: Path, fps: float) -> Path:
    """uint8 (L, H, W, 3) RGB -> a lossless FFV1 (bgr0) Matroska file at ``fps``: decoded
    back by the pipeline's pyav reader, its frames are these bit for bit."""
    import fractions

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


class IngestActor:
    """A Ray actor around one StreamIngest (threaded: ``wait`` calls block one thread)."""

    def __init__(self, camera: str, url: str, settings, model):
        from pipeline.serve.ingest import StreamIngest
        from pipeline.serve.metrics import StreamMetrics

        def score(clip):
            return model.score.remote(clip).result(timeout_s=120)

        self.ingest = StreamIngest(camera, url, settings, score, StreamMetrics(camera))
        self.ingest.start()

    def status(self) -> dict:
        return self.ingest.status()

    def predictions(self, after: int = -1) -> list[dict]:
        return self.ingest.predictions_after(after)

    def wait(self, after: int, timeout: float) -> list[dict]:
        return self.ingest.wait_predictions(after, timeout)

    def stop(self) -> None:
        self.ingest.stop()
