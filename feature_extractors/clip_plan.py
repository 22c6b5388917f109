"""Which frames make each clip, and the crop: pure numpy, importable without torch.

    plans = plan_clips_at(times, duration, fps=15.0, clip_len=16, clip_stride=16)
    clip = preprocess_frames(frames_uint8, config)        # (L, crop, crop, 3) uint8

The S3D extractor (feature_extractors.s3d re-exports these), the pipeline's decoder
(pipeline.decode) and the torch-free edge runner (pipeline.edge) all plan and crop clips
here, so their clips are the same. Only a resize (frames the decoder did not scale) needs
torchvision, imported then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ClipPlan", "center_crop", "plan_clips", "plan_clips_at", "preprocess_frames"]


@dataclass(frozen=True)
class ClipPlan:
    """One clip: native frame indices (length clip_len) and the time span it covers.

    The last `padded` entries repeat the last real frame (tail of the video).
    """

    frame_indices: tuple[int, ...]
    start_time: float
    end_time: float
    padded: int


def plan_clips(
    num_frames: int, native_fps: float, fps: float, clip_len: int, clip_stride: int
) -> list[ClipPlan]:
    """Plan a constant-rate video: frame i at i / native_fps (see `plan_clips_at`)."""
    if num_frames <= 0:
        raise ValueError(f"cannot plan clips for a video with {num_frames} frames")
    if native_fps <= 0:
        raise ValueError(f"native_fps must be > 0, got {native_fps}")
    times = np.arange(num_frames, dtype=np.float64) / native_fps
    return plan_clips_at(times, num_frames / native_fps, fps, clip_len, clip_stride)


def plan_clips_at(
    times, duration: float, fps: float, clip_len: int, clip_stride: int
) -> list[ClipPlan]:
    """Resample a video whose frames play at `times` (seconds from the first frame,
    increasing; constant or variable rate) to `fps` and cut it into clips (pure).

    Resampling: sampled frame k sits at t = k / fps, for every t inside the video
    (t < duration), and takes the frame whose time is nearest to t (the later one on a tie),
    clamped to the last frame. A native rate below `fps` therefore repeats frames.

    Clipping: clip j starts at sampled frame j * clip_stride. Full clips are always kept.
    A partial (tail) clip is kept, padded by repeating its last real frame, when it holds at
    least one sampled frame the previous clip does not cover; the first clip is always kept,
    so a video shorter than one clip still gives one padded clip. start_time is the time of
    the clip's first sampled frame, end_time the end of its last real one (capped at the
    video's duration).
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"cannot plan clips for a video with {len(times)} frames")
    if not duration > 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    # Small tolerance so that e.g. 300 frames at 30 fps -> exactly 150 samples at 15 fps.
    num_sampled = max(1, math.ceil(duration * fps - 1e-9))
    targets = np.arange(num_sampled, dtype=np.float64) / fps
    after = np.clip(np.searchsorted(times, targets - 1e-9), 0, len(times) - 1)
    before = np.clip(after - 1, 0, len(times) - 1)
    later = times[after] - targets <= targets - times[before] + 1e-9
    sampled = np.where(later, after, before).tolist()
    plans: list[ClipPlan] = []
    for start in range(0, num_sampled, clip_stride):
        real = min(clip_len, num_sampled - start)
        previous_end = start - clip_stride + clip_len  # sampled frames the previous clip covers
        if plans and real < clip_len and num_sampled <= previous_end:
            break  # a tail with nothing new
        indices = sampled[start : start + real]
        indices += [indices[-1]] * (clip_len - real)
        plans.append(
            ClipPlan(
                frame_indices=tuple(indices),
                start_time=start / fps,
                end_time=min((start + real) / fps, duration),
                padded=clip_len - real,
            )
        )
    return plans


def center_crop(frames: np.ndarray, crop: int) -> np.ndarray:
    """(..., H, W, 3) -> (..., crop, crop, 3) at torchvision's center_crop offsets."""
    height, width = frames.shape[-3:-1]
    if crop > min(height, width):
        raise ValueError(f"cannot crop {crop}x{crop} from {height}x{width} frames")
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return np.ascontiguousarray(frames[..., top : top + crop, left : left + crop, :])


def preprocess_frames(frames: np.ndarray, config) -> np.ndarray:
    """uint8 (L, H, W, 3) RGB -> uint8 (L, crop, crop, 3), on CPU, no normalisation.

    Resizes to config.resize unless the frames already have that size, then centre-crops.
    resize_method "exact": bilinear without antialiasing, exactly what
    S3D_Weights.KINETICS400_V1.transforms() does (torchvision hard-codes antialias=False
    there); otherwise (frames the decoder did not scale) antialiased bilinear. A pure
    function of the config (fields resize, crop, resize_method), so decode workers need no
    model; frames already at config.resize need no torch.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (L, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    if tuple(frames.shape[1:3]) != tuple(config.resize):
        frames = _resize(frames, config)
    return center_crop(frames, config.crop)


def _resize(frames: np.ndarray, config) -> np.ndarray:
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as vision_functional

    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (L, 3, H, W)
    images = vision_functional.resize(
        images,
        list(config.resize),
        interpolation=InterpolationMode.BILINEAR,
        antialias=getattr(config, "resize_method", "decoder") != "exact",
    )
    return images.permute(0, 2, 3, 1).contiguous().numpy()  # (L, H, W, 3)
