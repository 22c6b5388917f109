"""The same short scene in every container and codec users hold, written with PyAV.

    files = write_format_files("outputs/formats")      # {"h264": Path(...mp4), "av1": ...}
    frame = scene_frame(t, width, height)               # the upright content at time t

For decoder tests and benchmarks: every file shows the same content over time (a smooth
background, a moving square and a frame counter bar), so decoded frames can be compared
with :func:`scene_frame` and features of two files with each other. The content changes
once per 1/15 s step (S3D's rate), so a variable-rate file (frames at uneven times, every
step's start among them) holds the content of the constant-rate one at every sample time.

Kinds (:data:`FORMATS`): H.264 mp4 (the reference), AV1 mp4 (SVT-AV1) and AV1/Opus webm,
VP9/Opus webm, HEVC 10-bit mkv, HEVC ``hvc1`` mov, MJPEG avi, H.264 MPEG-TS, variable-rate
H.264 mp4 (explicit pts, gaps 20-67 ms), a phone-style rotated mp4 (pixels stored sideways,
the ``tkhd`` display matrix says 90 degrees) and 4:4:4 H.264.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

__all__ = ["FORMATS", "STEP_RATE", "rotate_mp4", "scene_frame", "write_format_files", "write_video"]

STEP_RATE = 15  # the content changes 15 times a second
# kind -> (file name, video codec, pixel format, audio codec or None, options)
FORMATS = {
    "h264": ("h264.mp4", "libx264", "yuv420p", None),
    "av1_mp4": ("av1.mp4", "libsvtav1", "yuv420p", None),
    "av1_webm": ("av1_opus.webm", "libsvtav1", "yuv420p", "libopus"),
    "vp9_webm": ("vp9_opus.webm", "libvpx-vp9", "yuv420p", "libopus"),
    "hevc10_mkv": ("hevc10.mkv", "libx265", "yuv420p10le", None),
    "hevc_mov": ("hevc_hvc1.mov", "libx265", "yuv420p", None),
    "mjpeg_avi": ("mjpeg.avi", "mjpeg", "yuvj420p", None),
    "mpegts": ("h264.ts", "libx264", "yuv420p", None),
    "vfr": ("vfr.mp4", "libx264", "yuv420p", None),
    "rotated": ("rotated.mp4", "libx264", "yuv420p", None),
    "yuv444": ("yuv444.mp4", "libx264", "yuv444p", None),
}
_QUIET = {"libx265": {"x265-params": "log-level=error"}, "libsvtav1": {"svtav1-params": "lp=1"}}


def scene_frame(t: float, width: int = 128, height: int = 96) -> np.ndarray:
    """uint8 (height, width, 3) RGB content of step floor(t * STEP_RATE)."""
    step = int(np.floor(t * STEP_RATE + 1e-6))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.empty((height, width, 3), np.float32)
    frame[..., 0] = 60 + 120 * x / width
    frame[..., 1] = 60 + 120 * y / height
    frame[..., 2] = 110 + 60 * np.sin(x / 9.0 + step / 3.0)
    size = height // 3
    left = int((step * 5) % (width - size))
    top = int(height / 2 - size / 2 + (height / 4) * np.sin(step / 4.0))
    frame[top : top + size, left : left + size] = (235, 40, 40)
    frame[height - 6 :, : int((step % 32 + 1) * width / 32)] = (20, 230, 20)  # the counter bar
    return frame.astype(np.uint8)


def _times(kind: str, duration: float) -> list[float]:
    steps = int(round(duration * STEP_RATE))
    if kind != "vfr":
        return [step / STEP_RATE for step in range(steps)]
    # Every step's start; two more frames inside each of the first 5 steps of every 10 (a
    # camera whose rate drops and rises): uneven gaps of 21-67 ms.
    times = []
    for step in range(steps):
        times.append(step / STEP_RATE)
        if step % 10 < 5:
            times += [step / STEP_RATE + 0.021, step / STEP_RATE + 0.045]
    return times


def write_video(path: Path, kind: str, duration: float, width: int, height: int) -> Path:
    """One file of ``kind`` (FORMATS) showing scene_frame over ``duration`` seconds."""
    name, codec, pixel_format, audio_codec = FORMATS[kind]
    rotated = kind == "rotated"
    stored = (height, width) if rotated else (width, height)  # sideways pixels
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=STEP_RATE, options=_QUIET.get(codec, {}))
        stream.width, stream.height, stream.pix_fmt = *stored, pixel_format
        if kind == "hevc_mov":
            stream.codec_tag = "hvc1"
        time_base = Fraction(1, 1000) if kind == "vfr" else Fraction(1, STEP_RATE)
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        audio = None
        if audio_codec:
            audio = container.add_stream(audio_codec, rate=48000)
            audio.layout = "mono"
        for t in _times(kind, duration):
            image = scene_frame(t, width, height)
            if rotated:  # stored counter-clockwise; the display matrix turns it back
                image = np.ascontiguousarray(np.rot90(image, k=1))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pixel_format)
            frame.pts = int(round(t / time_base))
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            _write_tone(container, audio, duration)
    if rotated:
        rotate_mp4(path, 90)
    return path


def _write_tone(container, stream, duration: float) -> None:
    rate, chunk = 48000, 960
    samples = np.sin(2 * np.pi * 440 * np.arange(int(rate * duration)) / rate) * 0.2
    for start in range(0, len(samples) - chunk + 1, chunk):
        frame = av.AudioFrame.from_ndarray(
            samples[None, start : start + chunk].astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def rotate_mp4(path: Path, degrees: int) -> None:
    """Set the display matrix of an mp4's (first) track header to rotate ``degrees``
    clockwise for display, as phones record: the 36-byte matrix of the ``tkhd`` box."""
    one, minus = 0x10000, -0x10000
    matrices = {
        90: (0, one, 0, minus, 0, 0, 0, 0, 0x40000000),
        180: (minus, 0, 0, 0, minus, 0, 0, 0, 0x40000000),
        270: (0, minus, 0, one, 0, 0, 0, 0, 0x40000000),
    }
    data = bytearray(Path(path).read_bytes())
    box = data.find(b"tkhd")
    if box < 0 or data[box + 4] != 0:
        raise ValueError(f"{path}: no version-0 tkhd box")
    start = box + 44  # type(4) version/flags(4) times, track, reserved, duration(20) ...(16)
    data[start : start + 36] = struct.pack(
        ">9I", *(value & 0xFFFFFFFF for value in matrices[degrees])
    )
    Path(path).write_bytes(bytes(data))


def write_format_files(
    directory: str | Path,
    duration: float = 1.6,
    width: int = 128,
    height: int = 96,
    kinds: tuple[str, ...] = tuple(FORMATS),
) -> dict[str, Path]:
    """Write every kind once into ``directory``; returns kind -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return {
        kind: write_video(directory / FORMATS[kind][0], kind, duration, width, height)
        for kind in kinds
    }
