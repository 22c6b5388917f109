"""The extraction job end to end on a local Ray: synthetic set, real clips, bad files, kill."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from part_snapshots import assert_rerun_skipped, part_ids

from pipeline import store
from pipeline.extract.job import ExtractConfig, extract_features
from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
CLIP = {"s3d_weights": "random", "clip_len": 16, "clip_stride": 16}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    config = SyntheticConfig(num_videos=8, num_classes=4, duration=1.6, seed=3)
    return generate_synthetic_dataset(root, config)


@pytest.fixture(scope="module")
def synthetic_store(synthetic, ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    config = ExtractConfig(
        videos=str(synthetic["videos"]),
        annotations=tuple(str(p) for p in synthetic["annotations"]),
        out=str(out),
        modalities=("visual", "text", "audio"),
        vggish_weights="random",
        **CLIP,
    )
    summary = extract_features(config)
    return out, config, summary


def test_synthetic_store_follows_the_contract(synthetic_store):
    out, _, summary = synthetic_store
    metadata = store.validate_store(out)
    assert metadata["task"] == "single_label"
    assert set(metadata["modalities"]) == {"visual", "text", "audio"}
    assert metadata["modalities"]["visual"]["dim"] == 1024
    assert metadata["modalities"]["audio"]["dim"] == 128
    text_dim = metadata["modalities"]["text"]["dim"]
    table = store.read_store(out)
    assert table.num_rows == 8 and summary["rows"] == 8
    for row in table.to_pylist():
        visual = store.sequence_to_numpy(row["visual"], 1024)
        # 1.6 s at 15 fps = 24 sampled frames -> one full clip of 16 plus a padded tail
        assert visual.shape == (2, 1024)
        assert store.sequence_to_numpy(row["text"], text_dim).shape[0] == 5
        assert store.sequence_to_numpy(row["audio"], 128).shape[0] >= 1
        assert np.asarray(row["visual_clip_times"]).shape == (2, 2)
    for modality, counts in summary["modalities"].items():
        assert counts["ok"] == 8 and counts["failed"] == 0, modality


def test_rerun_adds_nothing(synthetic_store, caplog):
    out, config, _ = synthetic_store
    before = store.read_store(out).sort_by("video_id")
    with caplog.at_level(logging.INFO, logger="pipeline.extract.job"):
        summary = extract_features(config)
    splits = before.column("split").to_pylist()
    sizes = store.split_sizes({name: splits.count(name) for name in set(splits)})
    assert f"msrvtt (official splits): {sizes}" in caplog.text  # the plan's split sizes
    for counts in summary["modalities"].values():
        assert counts == {**counts, "ok": 0, "failed": 0, "skipped": 8}
    after = store.read_store(out).sort_by("video_id")
    assert after.equals(before)


def test_changed_extractor_config_is_refused(synthetic_store):
    out, config, _ = synthetic_store
    changed = ExtractConfig(**{**config.__dict__, "clip_stride": 8, "modalities": ("visual",)})
    with pytest.raises(store.StoreError, match="another extractor config"):
        extract_features(changed)


def _write_msrvtt(path: Path, video_ids: list[str]) -> Path:
    videos = [
        {
            "video_id": vid,
            "category": i % 20,
            "split": "train",
            "url": "",
            "id": i,
            "start time": 0.0,
            "end time": 10.0,
        }
        for i, vid in enumerate(video_ids)
    ]
    sentences = [
        {"video_id": vid, "caption": f"a clip number {i}", "sen_id": i}
        for i, vid in enumerate(video_ids)
    ]
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    return path


@pytest.mark.slow
def test_real_clips_and_bad_files(shared_data, ray_session, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    real = sorted((shared_data / "videos").iterdir())
    names = {}
    for source in real:  # links, not copies: the real files stay in ../shared/data
        stem = source.stem + ("_avi" if source.suffix == ".avi" else "")  # test.mp4 + test.avi
        names[stem] = source
        (videos / f"{stem}{source.suffix}").symlink_to(source)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "noise.mp4").write_bytes(os.urandom(20000))
    (videos / "text.mkv").write_text("not a video at all")
    head = (shared_data / "videos" / "mmaction2_test.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(head[: len(head) // 3])
    bad = ["zero", "noise", "text", "truncated"]
    good = sorted(names)
    ids = good + bad + ["absent", "../../escape"]
    annotations = _write_msrvtt(tmp_path / "train_val_videodatainfo.json", ids)
    out = tmp_path / "store"
    config = ExtractConfig(
        videos=str(videos),
        annotations=(str(annotations),),
        out=str(out),
        modalities=("visual", "audio"),
        vggish_weights="random",
        **{**CLIP, "clip_stride": 64},  # a clip every ~4 s of the 45 s of real video: 15 clips
    )
    summary = extract_features(config)
    store.validate_store(out)
    table = store.read_store(out)
    rows = {row["video_id"]: row for row in table.to_pylist()}
    assert sorted(vid for vid, row in rows.items() if row["visual"] is not None) == sorted(good)
    failures = store.read_failures(out).to_pylist()
    visual_failed = {f["video_id"] for f in failures if f["stage"] in ("decode", "manifest")}
    assert visual_failed == set(bad) | {"absent", "../../escape"}
    assert all(f["error"] for f in failures)
    # mmaction2 mp4 clips have no audio track: null audio cell and a recorded reason
    for silent in ("mmaction2_demo", "mmaction2_test"):
        assert rows[silent]["audio"] is None
        assert any(f["video_id"] == silent and "no audio" in f["error"] for f in failures)
    for with_audio in ("mmaction2_test_avi", "v_GGSY1Qvo990"):
        if with_audio in rows:
            assert rows[with_audio]["audio"] is not None
    assert summary["modalities"]["visual"]["ok"] == len(good)
    assert not (tmp_path.parent / "escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["videos", "store", "train_val_videodatainfo.json"]
    )


def _run_extract(args, env, **kwargs):
    command = [sys.executable, str(REPO / "jobs" / "extract.py"), *args]
    return subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_rows(synthetic, synthetic_store, tmp_path):
    reference, _, _ = synthetic_store
    out = tmp_path / "store"
    args = [
        "--videos",
        str(synthetic["videos"]),
        "--annotations",
        *[str(p) for p in synthetic["annotations"]],
        "--out",
        str(out),
        "--modalities",
        "visual",
        "--s3d-weights",
        "random",
        "--clip-len",
        "16",
        "--clip-stride",
        "16",
        "--num-cpus",
        "2",
    ]
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS")
    process = _run_extract([*args], env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "_parts"
    deadline = time.time() + 240
    while time.time() < deadline and not list(parts.glob("visual-*/*.parquet")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and every Ray process it started
    process.wait()
    assert list(parts.glob("visual-*/*.parquet")), "the run never wrote a part"
    killed_parts = part_ids(parts, "visual-*/*.parquet")
    finished = _run_extract(args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = finished.communicate(timeout=400)
    assert finished.returncode == 0, output[-3000:]
    assert_rerun_skipped(killed_parts, part_ids(parts, "visual-*/*.parquet"))
    store.validate_store(out)
    resumed = store.read_store(out, columns=["video_id", "visual"]).sort_by("video_id")
    clean = store.read_store(reference, columns=["video_id", "visual"]).sort_by("video_id")
    assert resumed.column("video_id").to_pylist() == clean.column("video_id").to_pylist()
    for left, right in zip(resumed.column("visual"), clean.column("visual"), strict=True):
        np.testing.assert_allclose(
            store.sequence_to_numpy(left), store.sequence_to_numpy(right), rtol=1e-4, atol=1e-5
        )
