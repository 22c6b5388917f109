"""Extractors defined HERE, outside the package, run through the real extraction job.

The proof that the job is driven by the registry: `MeanColorExtractor` (clips in: per-clip
RGB mean and std, 6-d) and `CaptionWordsExtractor` (captions in: words and characters per
caption, 2-d) fill two extra modalities, ``color`` and ``caption_words``. They are registered
with `register_extractor` and extracted by `extract_features` on a synthetic set; no
pipeline code names them. Ray workers get the classes by value (cloudpickle), as any
extractor class that their Python path cannot import.

    PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/test_extractor_registry.py
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_extractors import (
    ActorResources,
    CaptionInputs,
    ClipInputs,
    Extractor,
    available_extractors,
    get_extractor,
    register_extractor,
)
from pipeline import store
from pipeline.extract.job import ExtractConfig, extract_features
from pipeline.ingest.decode import iter_clips
from pipeline.ingest.manifest import read_msrvtt
from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset


@dataclass(frozen=True)
class MeanColorConfig:
    """Small clips, cheap to decode: 4 frames at 5 fps, 32x32."""

    fps: float = 5.0
    size: int = 32
    clip_len: int = 4
    clip_stride: int = 4


class MeanColorExtractor(Extractor):
    """uint8 clips (N, L, size, size, 3) -> (N, 6): RGB mean then RGB std, in [0, 1]."""

    name = "test-mean-color"
    modality = "color"
    config_class = MeanColorConfig
    batch_size = 3  # clips per call: batches then mix clips of several videos
    feature_dim = 6
    resources = ActorResources(num_gpus=0)

    def __init__(self, config: MeanColorConfig, device="cpu") -> None:
        super().__init__(config, device)
        self.weights_description = "none (pixel statistics)"

    @classmethod
    def inputs(cls, config: MeanColorConfig) -> ClipInputs:
        size = config.size
        return ClipInputs(
            fps=config.fps,
            resize=(size, size),
            crop=size,
            clip_len=config.clip_len,
            clip_stride=config.clip_stride,
        )

    @property
    def output_dim(self) -> int:
        return 6

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        pixels = np.asarray(clips, np.float32).reshape(len(clips), -1, 3) / 255.0  # (N, P, 3)
        return np.concatenate([pixels.mean(axis=1), pixels.std(axis=1)], axis=1)

    def example_input(self, batch_size: int = 2) -> np.ndarray:
        size, length = self.config.size, self.config.clip_len
        shape = (batch_size, length, size, size, 3)
        return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


@dataclass(frozen=True)
class CaptionWordsConfig:
    lowercase: bool = True


class CaptionWordsExtractor(Extractor):
    """Captions -> (N, 2): words and characters of each caption."""

    name = "test-caption-words"
    modality = "caption_words"
    config_class = CaptionWordsConfig
    batch_size = 2  # videos per call
    feature_dim = 2
    resources = ActorResources(num_gpus=0)

    def __init__(self, config: CaptionWordsConfig, device="cpu") -> None:
        super().__init__(config, device)
        self.weights_description = "none (counts)"

    @classmethod
    def inputs(cls, config: CaptionWordsConfig) -> CaptionInputs:
        return CaptionInputs()

    @property
    def output_dim(self) -> int:
        return 2

    def __call__(self, captions: list[str]) -> np.ndarray:
        counts = [(len(caption.split()), len(caption)) for caption in captions]
        return np.asarray(counts, np.float32).reshape(-1, 2)

    def example_input(self, batch_size: int = 2) -> list[str]:
        return ["a dog runs"] * batch_size


@pytest.fixture(scope="module")
def registered():
    """Register both through the public API; ship this module's classes to Ray by value."""
    import ray.cloudpickle

    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    for extractor_class in (MeanColorExtractor, CaptionWordsExtractor):
        if extractor_class.name not in available_extractors():
            register_extractor(extractor_class)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def extracted(registered, ray_session, tmp_path_factory):
    synthetic = generate_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"),
        SyntheticConfig(num_videos=5, num_classes=2, duration=1.6, seed=11),
    )
    videos = sorted(Path(synthetic["videos"]).glob("video*.mp4"))
    videos[-1].write_bytes(b"not a video at all")  # a decode failure
    videos[-2].unlink()  # a missing file
    out = tmp_path_factory.mktemp("store")
    config = ExtractConfig(
        videos=synthetic["videos"],
        annotations=tuple(synthetic["annotations"]),
        out=str(out),
        modalities=("visual",),
    )
    extractors = {
        "color": ("test-mean-color", {"clip_len": 4, "clip_stride": 4}),
        "caption_words": ("test-caption-words", {}),
    }
    summary = extract_features(config, extractors=extractors)
    manifest = read_msrvtt(synthetic["annotations"], synthetic["videos"])
    return out, config, extractors, summary, manifest, videos[-1].stem, videos[-2].stem


def test_an_extractor_outside_the_package_fills_its_modality(extracted):
    out, _, _, summary, manifest, corrupt, missing = extracted
    metadata = store.validate_store(out)  # extra modalities are checked like the three
    assert metadata["modalities"]["color"] == {
        "dim": 6,
        "extractor": "test-mean-color",
        "weights": "none (pixel statistics)",
        "config": {"fps": 5.0, "size": 32, "clip_len": 4, "clip_stride": 4},
    }
    assert metadata["modalities"]["caption_words"]["dim"] == 2
    assert "visual" not in metadata["modalities"]
    rows = {row["video_id"]: row for row in store.read_store(out).to_pylist()}
    assert sorted(rows) == sorted(row.video_id for row in manifest.rows)
    good = sorted(set(rows) - {corrupt, missing})
    assert summary["modalities"]["color"] == {
        **summary["modalities"]["color"],
        "ok": len(good),
        "failed": 2,
        "clips": 2 * len(good),
    }
    spec = MeanColorExtractor.inputs(MeanColorConfig())
    for entry in manifest.rows:
        row = rows[entry.video_id]
        assert row["visual"] is None and row["text"] is None and row["audio"] is None
        if entry.video_id not in good:
            assert row["color"] is None and row["color_clip_times"] is None
            continue
        # The direct computation: the job's own decode, statistics by hand.
        clips = list(iter_clips(entry.path, spec))
        frames = np.stack([frames for _, _, _, frames in clips]).astype(np.float64) / 255.0
        expected = np.concatenate(
            [frames.mean(axis=(1, 2, 3)), frames.std(axis=(1, 2, 3))], axis=1
        )  # (clips, 6)
        color = store.sequence_to_numpy(row["color"], 6)
        assert color.shape == (2, 6)  # 1.6 s at 5 fps = 8 frames: two clips of 4
        np.testing.assert_allclose(color, expected, rtol=0, atol=1e-5)
        times = [(plan.start_time, plan.end_time) for _, _, plan, _ in clips]
        np.testing.assert_allclose(row["color_clip_times"], times, atol=1e-6)


def test_caption_extractor_needs_no_video_file(extracted):
    out, _, _, summary, manifest, _, missing = extracted
    rows = {row["video_id"]: row for row in store.read_store(out).to_pylist()}
    assert summary["modalities"]["caption_words"]["ok"] == len(manifest.rows)
    for entry in manifest.rows:  # the missing and the corrupt video keep their captions
        expected = [(len(caption.split()), len(caption)) for caption in entry.captions]
        np.testing.assert_array_equal(
            store.sequence_to_numpy(rows[entry.video_id]["caption_words"], 2), expected
        )
    assert rows[missing]["caption_words"] is not None


def test_failures_are_rows_and_a_rerun_resumes(extracted):
    out, config, extractors, _, _, corrupt, missing = extracted
    failures = store.read_failures(out).to_pylist()
    stages = {(f["video_id"], f["stage"]) for f in failures}
    assert {(corrupt, "decode"), (missing, "manifest")} <= stages
    before = store.read_store(out).sort_by("video_id")
    summary = extract_features(config, extractors=extractors)
    assert summary["modalities"]["caption_words"]["skipped"] == before.num_rows
    color = summary["modalities"]["color"]
    assert (color["ok"], color["failed"], color["skipped"]) == (0, 2, before.num_rows - 2)
    assert store.read_store(out).sort_by("video_id").equals(before)


def test_extra_modality_names_keep_the_contract(extracted, tmp_path):
    """Extra modalities may not take another column's name; the three keep their dims."""
    record = {"dim": 2, "extractor": "x", "weights": "none", "config": {}}
    metadata = {"name": "n", "task": "single_label", "class_names": ["a"], "modalities": {}}
    for bad in ("label", "split", "visual_clip_times", "Color", "two words"):
        with pytest.raises(store.StoreError, match="unknown modality"):
            store.write_dataset_json(tmp_path, {**metadata, "modalities": {bad: record}})
    with pytest.raises(store.StoreError, match="dim"):
        store.write_dataset_json(tmp_path, {**metadata, "modalities": {"visual": record}})
    store.write_dataset_json(tmp_path, {**metadata, "modalities": {"color": record}})
    bad_width = pa.table(
        {
            "video_id": ["v"],
            "split": ["train"],
            "label": pa.array([0], pa.int32()),
            "color": pa.array([[[0.5, 0.5, 0.5]]], store.SEQUENCE),
        }
    )
    pq.write_table(bad_width, tmp_path / "x.parquet")
    with pytest.raises(store.StoreError, match="color"):
        store.validate_store(tmp_path)

    class Capitalised(MeanColorExtractor):
        name = "test-capitalised"
        modality = "Color"

    with pytest.raises(ValueError, match="lowercase identifier"):
        register_extractor(Capitalised)
    assert "test-capitalised" not in available_extractors()
    assert get_extractor("test-mean-color") is MeanColorExtractor
    # A column's name is refused by the job before any work.
    _, config, _, _, _, _, _ = extracted
    with pytest.raises(store.StoreError, match="another column"):
        extract_features(config, extractors={"labels": ("test-mean-color", {})})
    with pytest.raises(ValueError, match="fills 'color', not 'colour'"):
        extract_features(config, extractors={"colour": ("test-mean-color", {})})
