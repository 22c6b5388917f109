"""Clips of a video, planned from its frames' presentation times, one clip in memory at once.

    stream = ClipStream("video.mp4", inputs, decoder="auto")   # inputs: a ClipInputs
    stream.info.record()          # {"backend": "pyav", "rotation": 0, "variable_rate": ...}
    for index, num_clips, plan, frames in stream:   # frames: uint8 (clip_len, crop, crop, 3)
        ...

The clip plan is :func:`feature_extractors.clip_plan.plan_clips_at` over the times the
backend reports, so a variable-rate recording is sampled at the times the clip says. Frames are
fetched clip by clip (the backend seeks or decodes forward), so memory is one clip whatever
the video's length. ``decoder="auto"`` tries the installed backends fastest first and takes
the first that opens the file and decodes its first clip.

This runs in the calling process; :mod:`pipeline.decode.guard` runs it in a killable worker
process under a deadline (what the jobs use).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from pipeline.decode.backends import (
    DecodeError,
    VideoInfo,
    backend_candidates,
    first_line,
    open_reader,
    open_source,
)

__all__ = ["DECODER_RESIZE_DIFFERENCE", "ClipStream", "decode_size", "iter_clips", "probe_video"]

# How far the "decoder" resize (FFmpeg's bilinear while decoding) is from "exact" (the S3D
# weights' reference transforms): |decoder - exact| over the first clip's uint8 pixels of
# each shared sample clip (pyav; benchmarks/decoders.py), the largest over the clips.
# dataset.json records it beside the policy when "decoder" is used; tests/test_decode.py
# checks that it still holds.
DECODER_RESIZE_DIFFERENCE = {
    "reference": "exact",
    "mean_abs_255": 1.48,  # 1.27 (mmaction2_test.mp4) to 1.48 (v_GGSY1Qvo990.mp4)
    "p99_255": 11.0,  # 6 (mmaction2_test.avi) to 11 (mmaction2_demo.mp4)
    "measured_on": [
        "mmaction2_demo.mp4",
        "mmaction2_test.avi",
        "mmaction2_test.mp4",
        "v_GGSY1Qvo990.mp4",
    ],
    "measured_by": "benchmarks/decoders.py (first clip, pyav)",
}


def decode_size(inputs) -> tuple[int, int] | None:
    """The size the decoder scales to: the resize for "decoder", native for "exact"."""
    method = getattr(inputs, "resize_method", "decoder")
    return None if method == "exact" else tuple(inputs.resize)


class ClipStream:
    """The clips of one video (see the module docstring); a context manager and an iterator.

    ``shift`` (a :mod:`pipeline.score.shifts` description) simulates another camera on each
    clip's decoded frames, before the crop, seeded by ``key`` (default: path). ``allowed``
    restricts the backends (e.g. ``TORCH_FREE``); ``inputs`` needs ``fps, clip_len,
    clip_stride, resize, crop`` and optionally ``resize_method``.
    """

    def __init__(
        self,
        path: str,
        inputs,
        decoder: str = "auto",
        threads: int = 1,
        *,
        shift: dict | None = None,
        key: str | None = None,
        device: str = "cpu",
        allowed: tuple[str, ...] | None = None,
    ):
        self.path, self.inputs, self.shift, self.key = path, inputs, shift, key or path
        self._stack = ExitStack()
        source = self._stack.enter_context(open_source(path))
        errors = []
        for backend in backend_candidates(decoder, allowed):
            try:
                reader = open_reader(backend, source, decode_size(inputs), threads, device)
                self.reader, self.info = reader, reader.info
                self.plans = self._plan(reader.info)
                self._first = self._clip(0)  # a backend that opens but cannot decode: next
                break
            except Exception as error:  # noqa: BLE001 - every backend's reason is kept
                if decoder != "auto":
                    self._stack.close()
                    raise DecodeError(first_line(error)) from error
                errors.append(f"{backend}: {first_line(error)}")
        if not hasattr(self, "_first"):
            self._stack.close()
            reasons = "; ".join(errors) or "no decoder backend is installed"
            raise DecodeError(f"no backend decodes it: {reasons}")

    def _plan(self, info: VideoInfo):
        from feature_extractors.clip_plan import plan_clips_at

        if info.num_frames < 2 or not info.duration > 0:
            raise DecodeError(f"too short: {info.num_frames} frame(s), duration {info.duration}")
        inputs = self.inputs
        return plan_clips_at(
            info.times, info.duration, inputs.fps, inputs.clip_len, inputs.clip_stride
        )

    def _clip(self, number: int) -> np.ndarray:
        from feature_extractors.clip_plan import preprocess_frames

        indices = list(self.plans[number].frame_indices)
        unique = sorted(set(indices))
        decoded = self.reader.frames(unique)  # (U, H, W, 3) uint8
        position = {index: row for row, index in enumerate(unique)}
        frames = decoded[[position[index] for index in indices]]
        if self.shift is not None:
            from pipeline.score.shifts import shift_clip

            frames = shift_clip(frames, self.shift, self.key, number)
        return preprocess_frames(frames, self.inputs)

    def __iter__(self) -> Iterator[tuple[int, int, object, np.ndarray]]:
        try:
            for number, plan in enumerate(self.plans):
                frames = self._first if number == 0 else self._clip(number)
                self._first = None
                yield number, len(self.plans), plan, frames
        finally:
            self.close()

    def close(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()
        self._stack.close()

    def __enter__(self) -> ClipStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_clips(
    path: str,
    config,
    threads: int = 1,
    *,
    shift: dict | None = None,
    key: str | None = None,
    decoder: str = "auto",
) -> Iterator[tuple[int, int, object, np.ndarray]]:
    """Yield ``(index, num_clips, clip_plan, frames)`` for each clip ``config`` plans
    (a ClipInputs or S3DConfig); in this process (see ClipStream)."""
    yield from ClipStream(path, config, decoder, threads, shift=shift, key=key)


def probe_video(path: str, decoder: str = "auto") -> VideoInfo:
    """Frame times, rate and upright size of a video (the first backend that opens it)."""
    errors = []
    with open_source(path) as source:
        for backend in backend_candidates(decoder):
            try:
                reader = open_reader(backend, source, None)
            except DecodeError as error:
                errors.append(f"{backend}: {first_line(error)}")
                continue
            reader.close()
            return reader.info
    raise DecodeError("; ".join(errors) or "no decoder backend is installed")
