"""Simulated camera shifts: pure functions on uint8 frames (T, H, W, 3), each at 3 severities.

The cross-camera robustness report (:mod:`pipeline.score.robustness`) scores the same test videos
seen through other cameras: darker or brighter exposure, lower contrast, a colour cast, soft
optics, sensor noise, a low-resolution sensor, a low-bitrate H.264 stream, a low frame rate.
Each shift is a pure function of the frames and one parameter (and a random generator for
noise), registered in :data:`SHIFTS` with its parameter at severities 1, 2, 3; severity 0 is
the identity. The decode stage applies a shift to each clip's decoded frames (at the S3D
resize, 256x256, before the centre crop) through :func:`shift_clip`, seeded per video and clip:

    shift = {"name": "blur", "severity": 2, "seed": 0}
    frames = shift_clip(frames, shift, key="video7", clip_index=0)    # deterministic
    frames = apply_shift(frames, "noise", 3, np.random.default_rng(0))

Per-clip application: a clip is re-encoded as its own H.264 stream (starting on a key frame)
and the frame-rate drop holds every k-th frame of the clip, counted from its first frame.
"""

from __future__ import annotations

import fractions
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SEVERITIES",
    "SHIFTS",
    "Shift",
    "apply_shift",
    "color_temperature",
    "contrast",
    "exposure",
    "frame_rate",
    "gaussian_blur",
    "gaussian_blur_float",
    "h264",
    "resize_float",
    "resolution",
    "sensor_noise",
    "shift_clip",
    "shift_tag",
    "validate_shift",
]

SEVERITIES = (1, 2, 3)
_GAMMA = 2.2  # display gamma: exposure acts on linear light


def _check(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, not {frames.shape} {frames.dtype}")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- float32 helpers


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (T, H, W, C) float32 frames (half-pixel centres, edge clamped)."""

    def taps(size_out: int, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(position).astype(np.int64)
        return low, np.minimum(low + 1, size_in - 1), (position - low).astype(np.float32)

    for axis, size in ((1, height), (2, width)):
        low, high, weight = taps(size, image.shape[axis])
        weight = weight.reshape([-1 if index == axis else 1 for index in range(image.ndim)])
        resized = np.take(image, low, axis=axis)  # take keeps a contiguous layout
        resized -= np.take(image, high, axis=axis)
        resized *= -weight  # low + (high - low) * weight, in place
        resized += np.take(image, low, axis=axis)
        image = resized
    return image


def gaussian_blur_float(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (T, H, W, C) float32 frames with reflected edges."""
    radius = max(1, math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    kernel /= kernel.sum()
    for axis in (1, 2):
        padding = [(0, 0)] * image.ndim
        padding[axis] = (radius, radius)
        padded = np.pad(image, padding, mode="reflect")
        window = [slice(None)] * image.ndim
        blurred, term = np.zeros_like(image), np.empty_like(image)
        for tap, weight in enumerate(kernel):  # shifted slices, in place: no per-pixel loop
            window[axis] = slice(tap, tap + image.shape[axis])
            blurred += np.multiply(padded[tuple(window)], weight, out=term)
        image = blurred
    return image


# ------------------------------------------------------------------------- the shifts


def exposure(frames: np.ndarray, stops: float) -> np.ndarray:
    """Over- (stops > 0) or under-exposure (stops < 0): linear light times 2**stops, clipped."""
    _check(frames)
    if stops == 0:
        return frames.copy()
    linear = (frames.astype(np.float32) / 255.0) ** _GAMMA
    linear *= np.float32(2.0**stops)
    return _to_uint8(255.0 * np.clip(linear, 0, 1) ** (1 / _GAMMA))


def contrast(frames: np.ndarray, factor: float) -> np.ndarray:
    """Contrast times ``factor`` around each frame's mean (haze, a flat sensor response)."""
    _check(frames)
    if factor == 1:
        return frames.copy()
    image = frames.astype(np.float32)
    mean = image.mean(axis=(1, 2, 3), keepdims=True)
    return _to_uint8((image - mean) * np.float32(factor) + mean)


def color_temperature(frames: np.ndarray, warmth: float) -> np.ndarray:
    """A white-balance error: red gain 1 + 0.3 w, blue gain 1 - 0.3 w (w > 0 warm, < 0 cool)."""
    _check(frames)
    if warmth == 0:
        return frames.copy()
    gains = np.array([1 + 0.3 * warmth, 1.0, 1 - 0.3 * warmth], np.float32)
    return _to_uint8(frames.astype(np.float32) * gains)


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Soft or defocused optics: a Gaussian blur of ``sigma`` pixels."""
    _check(frames)
    if sigma <= 0:
        return frames.copy()
    return _to_uint8(gaussian_blur_float(frames.astype(np.float32), sigma))


def sensor_noise(frames: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sensor noise of ``std`` (0-255 units), independent per pixel and channel."""
    _check(frames)
    if std <= 0:
        return frames.copy()
    noise = rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(std)
    return _to_uint8(frames.astype(np.float32) + noise)


def resolution(frames: np.ndarray, scale: float) -> np.ndarray:
    """A low-resolution sensor: area-average down by ``scale``, bilinear back to the size."""
    _check(frames)
    if scale >= 1:
        return frames.copy()
    import torch
    import torch.nn.functional as functional

    height, width = frames.shape[1:3]
    small = (max(1, round(height * scale)), max(1, round(width * scale)))
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    images = functional.interpolate(images, size=small, mode="area")
    images = functional.interpolate(images, size=(height, width), mode="bilinear")
    return _to_uint8(images.permute(0, 2, 3, 1).numpy())


def h264(frames: np.ndarray, kilobits: float, fps: float = 15.0) -> np.ndarray:
    """Re-encode as H.264 (yuv420p) at ``kilobits`` kbit/s and decode back, all in memory.

    The rate control assumes ``fps`` frames per second (S3D samples clips at 15 fps).
    """
    _check(frames)
    if kilobits <= 0:
        return frames.copy()
    import av

    height, width = frames.shape[1:3]
    padded = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
    rate = fractions.Fraction(fps).limit_denominator(1001)
    encoder.time_base, encoder.framerate, encoder.bit_rate = 1 / rate, rate, int(kilobits * 1000)
    # one thread and no lookahead: the same bytes for the same frames, on any machine
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "threads": "1"}
    packets = []
    for index, image in enumerate(padded):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = index
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))
    decoder = av.CodecContext.create("h264", "r")
    decoded = [frame for packet in packets for frame in decoder.decode(packet)]
    decoded += decoder.decode(None)
    if len(decoded) != len(frames):
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} of {len(frames)} frames")
    return np.stack([frame.to_ndarray(format="rgb24")[:height, :width] for frame in decoded])


def frame_rate(frames: np.ndarray, factor: int) -> np.ndarray:
    """A camera at 1/``factor`` of the rate: every ``factor``-th frame, held until the next."""
    _check(frames)
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"frame-rate factor must be >= 1, not {factor}")
    return frames[(np.arange(len(frames)) // factor) * factor]  # fancy indexing: a copy


# ------------------------------------------------------------------------ the suite


@dataclass(frozen=True)
class Shift:
    """One suite entry: a shift function and its parameter at severities 1, 2, 3."""

    function: Callable[..., np.ndarray]
    levels: tuple[float, float, float]
    setting: str  # the parameter in words: setting.format(parameter)
    random: bool = False  # takes the random generator as a third argument


SHIFTS: dict[str, Shift] = {
    "underexposure": Shift(exposure, (-1.0, -2.0, -3.0), "{:+g} EV"),
    "overexposure": Shift(exposure, (0.75, 1.5, 2.25), "{:+g} EV"),
    "contrast": Shift(contrast, (0.6, 0.4, 0.2), "contrast x{:g}"),
    "color_temperature": Shift(color_temperature, (0.33, 0.67, 1.0), "warm cast {:g}"),
    "blur": Shift(gaussian_blur, (1.0, 2.0, 4.0), "sigma {:g} px"),
    "noise": Shift(sensor_noise, (8.0, 16.0, 32.0), "std {:g}/255", random=True),
    "resolution": Shift(resolution, (0.5, 0.25, 0.125), "{:g}x resolution"),
    "h264": Shift(h264, (300.0, 100.0, 30.0), "{:g} kbit/s"),
    "frame_rate": Shift(frame_rate, (2, 3, 5), "fps / {:g}"),
}


def apply_shift(
    frames: np.ndarray, name: str, severity: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``frames`` through suite shift ``name`` at ``severity`` (0 = identity); a new array."""
    _check(frames)
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r} (known: {', '.join(SHIFTS)})")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0 or one of {SEVERITIES}, not {severity!r}")
    if severity == 0:
        return frames.copy()
    shift = SHIFTS[name]
    parameter = shift.levels[severity - 1]
    if shift.random:
        return shift.function(
            frames, parameter, rng if rng is not None else np.random.default_rng()
        )
    return shift.function(frames, parameter)


def validate_shift(shift: dict) -> dict:
    """The canonical JSON-serialisable form ``{"name", "severity", "seed"}`` of a shift."""
    unknown = set(shift) - {"name", "severity", "seed"}
    if unknown or "name" not in shift or "severity" not in shift:
        raise ValueError(f"a shift is {{'name', 'severity'[, 'seed']}}, got {shift!r}")
    name, severity, seed = str(shift["name"]), int(shift["severity"]), int(shift.get("seed", 0))
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r} (known: {', '.join(SHIFTS)})")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0 or one of {SEVERITIES}, not {severity!r}")
    return {"name": name, "severity": severity, "seed": seed}


def shift_tag(shift: dict) -> str:
    """A directory-safe name of a shift, e.g. ``blur-s2-seed0``."""
    shift = validate_shift(shift)
    return f"{shift['name']}-s{shift['severity']}-seed{shift['seed']}"


def shift_clip(frames: np.ndarray, shift: dict, key: str, clip_index: int) -> np.ndarray:
    """Apply ``shift`` to one clip; the noise depends only on (seed, key, clip_index).

    ``key`` names the video (its id): the same video gives the same shifted frames on any
    worker, in any order, whatever its path.
    """
    shift = validate_shift(shift)
    rng = np.random.default_rng([shift["seed"], zlib.crc32(key.encode()), clip_index])
    return apply_shift(frames, shift["name"], shift["severity"], rng)
