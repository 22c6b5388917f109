"""The synthetic dataset: real, decodable videos with audio, deterministic, MSR-VTT readable."""

from __future__ import annotations

import json
from dataclasses import replace

import av
import decord
import numpy as np
import pytest

from pipeline.ingest.manifest import MSRVTT_CATEGORIES, read_msrvtt
from pipeline.synthetic.videos import (
    DEFAULT_CAMERAS,
    Camera,
    SyntheticConfig,
    apply_camera,
    generate_synthetic_dataset,
)

CONFIG = SyntheticConfig(num_videos=12, num_classes=4, duration=1.0, fps=10, width=96,
                         height=64, seed=3, sample_rate=16000, captions_per_video=3)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), CONFIG)


def decoded_frames(path: str) -> np.ndarray:
    return decord.VideoReader(path).get_batch(list(range(3))).asnumpy()


def test_videos_decode_with_the_configured_geometry(dataset):
    assert dataset["num_videos"] == 12 and len(dataset["cameras"]) == 12
    for index in range(CONFIG.num_videos):
        reader = decord.VideoReader(f"{dataset['videos']}/video{index}.mp4")
        assert abs(len(reader) - CONFIG.duration * CONFIG.fps) <= 1
        assert reader.get_avg_fps() == pytest.approx(CONFIG.fps, rel=0.01)
        assert reader[0].shape == (CONFIG.height, CONFIG.width, 3)


def test_audio_track_is_present(dataset):
    assert dataset["audio_codec"] == "aac"
    with av.open(f"{dataset['videos']}/video0.mp4") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.codec_context.sample_rate == 16000
        assert stream.codec_context.layout.name == "mono"
        samples = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(stream)])
    # AAC adds up to two frames of encoder delay and padding
    assert abs(len(samples) / 16000 - CONFIG.duration) <= 2 * 1024 / 16000
    assert 0.05 < np.abs(samples).mean() < 0.5  # a real signal, not silence or clipping


def test_annotations_read_back_with_read_msrvtt(dataset):
    manifest = read_msrvtt(dataset["annotations"], dataset["videos"])
    assert not manifest.missing and len(manifest.rows) == 12
    counts = {
        split: sum(row.split == split for row in manifest.rows) for split in dataset["splits"]
    }
    assert counts == dataset["splits"] == {"train": 7, "val": 1, "test": 4}
    assert {row.label for row in manifest.rows} == set(range(CONFIG.num_classes))
    assert {row.label for row in manifest.rows if row.split == "train"} == set(range(4))
    assert all(len(row.captions) == 3 and row.duration == 1.0 for row in manifest.rows)
    for row in manifest.rows:  # the cross-camera setting: test videos use unseen cameras
        cameras = CONFIG.test_cameras if row.split == "test" else CONFIG.train_cameras
        assert dataset["cameras"][row.video_id] in cameras
        assert dataset["labels"][row.video_id] == row.label
    assert dataset["class_names"] == list(MSRVTT_CATEGORIES[:4])
    with open(dataset["annotations"][1]) as stream:
        entry = json.load(stream)["videos"][0]
    assert entry["split"] == "test" and entry["camera"] in entry["url"]


def test_same_seed_same_content_other_seed_differs(dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", CONFIG, workers=2)  # pool path too
    other = generate_synthetic_dataset(tmp_path / "other", replace(CONFIG, seed=4))
    for index in range(CONFIG.num_videos):
        first = decoded_frames(f"{dataset['videos']}/video{index}.mp4")
        assert np.array_equal(first, decoded_frames(f"{again['videos']}/video{index}.mp4"))
        assert not np.array_equal(first, decoded_frames(f"{other['videos']}/video{index}.mp4"))
    for first, second in zip(dataset["annotations"], again["annotations"], strict=True):
        with open(first) as one, open(second) as two:
            assert json.load(one) == json.load(two)
    with (
        av.open(f"{dataset['videos']}/video5.mp4") as one,
        av.open(f"{again['videos']}/video5.mp4") as two,
    ):
        audio_one = np.concatenate([frame.to_ndarray() for frame in one.decode(audio=0)], axis=1)
        audio_two = np.concatenate([frame.to_ndarray() for frame in two.decode(audio=0)], axis=1)
    assert np.array_equal(audio_one, audio_two)


def test_without_aac_encoder_videos_are_written_silent_with_a_warning(tmp_path, monkeypatch):
    def no_aac(name, mode="r"):
        raise av.codec.codec.UnknownCodecError(name)

    monkeypatch.setattr(av.codec, "Codec", no_aac)
    with pytest.warns(UserWarning, match="no AAC encoder"):
        info = generate_synthetic_dataset(tmp_path, replace(CONFIG, num_videos=2))
    assert info["audio_codec"] is None
    with av.open(f"{info['videos']}/video0.mp4") as container:
        assert not container.streams.audio and len(container.streams.video) == 1


def test_captions_name_the_class():
    from pipeline.synthetic.videos import _CLASS_WORDS, _captions

    rng = np.random.default_rng(0)
    for label in range(20):
        for caption in _captions((label,), 4, rng):
            assert any(word in caption for word in _CLASS_WORDS[label])
            others = [w for k, words in enumerate(_CLASS_WORDS) if k != label for w in words]
            assert not any(f" {word} " in f" {caption} " for word in others), caption


def test_config_and_cameras_are_validated(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=21)
    with pytest.raises(ValueError, match="even"):
        SyntheticConfig(width=161)
    with pytest.raises(ValueError, match="cam_z"):
        generate_synthetic_dataset(tmp_path, replace(CONFIG, test_cameras=("cam_z",)))


FRAMES = np.random.default_rng(0).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)


def test_apply_camera_default_is_identity():
    result = apply_camera(FRAMES, Camera("plain"), np.random.default_rng(1))
    assert result.dtype == np.uint8 and np.array_equal(result, FRAMES)
    assert result is not FRAMES
    with pytest.raises(ValueError):
        apply_camera(FRAMES.astype(np.float32), Camera("plain"))


def high_frequency_energy(frames: np.ndarray) -> float:
    image = frames.astype(np.float64)
    return float(np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=2)).mean())


def test_apply_camera_directional_effects():
    flat = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    brighter = apply_camera(flat, Camera("bright", brightness=0.2))
    assert brighter.mean() == pytest.approx(100 + 51, abs=1)
    assert apply_camera(flat, Camera("dark", brightness=-0.2)).mean() < flat.mean()
    blurred = apply_camera(FRAMES, Camera("soft", blur=1.5))
    assert high_frequency_energy(blurred) < 0.5 * high_frequency_energy(FRAMES)
    assert abs(float(blurred.mean()) - float(FRAMES.mean())) < 2  # blur keeps the mean
    low_resolution = apply_camera(FRAMES, Camera("small", scale=0.5))
    assert high_frequency_energy(low_resolution) < high_frequency_energy(FRAMES)
    warm = apply_camera(flat, Camera("warm", color_cast=(1.2, 1.0, 0.8))).mean(axis=(0, 1, 2))
    assert warm[0] > 100 > warm[2]
    flat_contrast = apply_camera(FRAMES, Camera("flat", contrast=0.5))
    assert flat_contrast.std() < 0.6 * FRAMES.std()
    noisy = apply_camera(flat, Camera("grainy", noise=10.0), np.random.default_rng(0))
    assert 8 < noisy.astype(np.float64).std() < 12
    again = apply_camera(flat, Camera("grainy", noise=10.0), np.random.default_rng(0))
    assert np.array_equal(noisy, again)


def test_default_cameras_split_train_and_unseen():
    assert {"cam_a", "cam_b", "cam_c", "cam_d"} <= set(DEFAULT_CAMERAS)
    assert all(name == camera.name for name, camera in DEFAULT_CAMERAS.items())
    frames = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    means = {name: apply_camera(frames, DEFAULT_CAMERAS[name]).mean(axis=(0, 1, 2))
             for name in DEFAULT_CAMERAS}  # fmt: skip
    # the unseen cameras shift colour far more than the training cameras differ
    assert np.abs(means["cam_c"] - means["cam_a"]).max() > 30
    assert np.abs(means["cam_d"] - means["cam_a"]).max() > 30
    assert np.abs(means["cam_b"] - means["cam_a"]).max() < 20
