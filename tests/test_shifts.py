"""Camera shifts: identity at severity 0, the expected direction at 1 < 2 < 3, deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.score.shifts import (
    SEVERITIES,
    SHIFTS,
    apply_shift,
    frame_rate,
    h264,
    shift_clip,
    shift_tag,
    validate_shift,
)


def textured_clip(frames: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    """Mid-range moving texture: smooth colour field plus fine detail, shifted each frame."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.uniform(70, 180, (size // 16, size // 16, 3)), np.ones((16, 16, 1)))
    image = coarse + rng.normal(0, 20, (size, size, 3))
    clip = np.stack([np.roll(image, 3 * index, axis=1) for index in range(frames)])
    return np.clip(clip, 0, 255).astype(np.uint8)


def high_frequency(frames: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels: edges and fine detail."""
    image = frames.astype(np.float32)
    return float(np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=2)).mean())


def error(frames: np.ndarray) -> float:
    return float(np.abs(frames.astype(np.float32) - CLIP.astype(np.float32)).mean())


CLIP = textured_clip()
FLAT = np.full((4, 32, 32, 3), 128, np.uint8)
# shift -> (statistic, +1 if it rises with severity, -1 if it falls, input clip)
DIRECTIONS = {
    "underexposure": (lambda f: f.mean(), -1, CLIP),
    "overexposure": (lambda f: f.mean(), +1, CLIP),
    "contrast": (lambda f: f.astype(np.float32).std(), -1, CLIP),
    "color_temperature": (lambda f: f[..., 0].mean() / f[..., 2].mean(), +1, CLIP),
    "blur": (high_frequency, -1, CLIP),
    "noise": (lambda f: f.astype(np.float32).var(), +1, FLAT),
    "resolution": (high_frequency, -1, CLIP),
    "h264": (error, +1, CLIP),
    "frame_rate": (lambda f: len(np.unique(f.reshape(len(f), -1), axis=0)), -1, CLIP),
}


def test_every_registered_shift_is_tested():
    assert set(DIRECTIONS) == set(SHIFTS)
    assert all(len(shift.levels) == len(SEVERITIES) for shift in SHIFTS.values())


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_severity_zero_is_the_identity(name):
    out = apply_shift(CLIP, name, 0)
    assert np.array_equal(out, CLIP) and out is not CLIP
    parameter_free = SHIFTS[name].function  # the function's own neutral value is the identity
    neutral = {"exposure": 0, "contrast": 1, "color_temperature": 0, "gaussian_blur": 0,
               "resolution": 1, "h264": 0, "frame_rate": 1}  # fmt: skip
    if parameter_free.__name__ in neutral:
        assert np.array_equal(parameter_free(CLIP, neutral[parameter_free.__name__]), CLIP)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_severities_move_frames_in_the_expected_direction(name):
    statistic, direction, clip = DIRECTIONS[name]
    values = []
    for severity in (0, *SEVERITIES):
        out = apply_shift(clip, name, severity, np.random.default_rng(1))
        assert out.shape == clip.shape and out.dtype == np.uint8, severity
        values.append(float(statistic(out)))
    steps = np.diff(values) * direction
    assert (steps > 0).all(), f"{name}: {values}"


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shift_clip_is_deterministic_per_video_and_clip(name):
    shift = {"name": name, "severity": 2, "seed": 5}
    first = shift_clip(CLIP, shift, "video3", 1)
    assert np.array_equal(first, shift_clip(CLIP.copy(), shift, "video3", 1))
    if SHIFTS[name].random:  # the noise depends on the video, the clip and the seed
        assert not np.array_equal(first, shift_clip(CLIP, shift, "video4", 1))
        assert not np.array_equal(first, shift_clip(CLIP, shift, "video3", 2))
        assert not np.array_equal(first, shift_clip(CLIP, {**shift, "seed": 6}, "video3", 1))


def test_h264_changes_pixels_but_keeps_shape_even_for_odd_sizes():
    odd = textured_clip(frames=5, size=64)[:, :63, :61]
    out = h264(odd, 50.0)
    assert out.shape == odd.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.int16) - odd).mean() > 0


def test_frame_rate_drop_holds_every_kth_frame():
    out = frame_rate(CLIP, 3)
    for index in range(len(CLIP)):
        assert np.array_equal(out[index], CLIP[index - index % 3])
    assert np.array_equal(frame_rate(CLIP, 1), CLIP)
    with pytest.raises(ValueError):
        frame_rate(CLIP, 0)


def test_shift_descriptions_are_validated():
    assert validate_shift({"name": "blur", "severity": 2}) == {
        "name": "blur",
        "severity": 2,
        "seed": 0,
    }
    assert shift_tag({"name": "h264", "severity": 3, "seed": 1}) == "h264-s3-seed1"
    for bad in (
        {"name": "fog", "severity": 1},
        {"name": "blur", "severity": 4},
        {"name": "blur"},
        {"name": "blur", "severity": 1, "extra": 1},
    ):
        with pytest.raises(ValueError):
            validate_shift(bad)
    with pytest.raises(ValueError, match="uint8"):
        apply_shift(CLIP.astype(np.float32), "blur", 1)
