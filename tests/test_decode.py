"""Decoder backends on files of every kind (written by PyAV here), frames by presentation time,
rotation, damaged input, the killable decode child, and the exact S3D preprocessing."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from feature_extractors.base import ClipInputs
from feature_extractors.s3d import S3DConfig, plan_clips
from pipeline.decode import (
    DECODER_RESIZE_DIFFERENCE,
    ClipStream,
    Deadline,
    DecodeCrashed,
    DecodeError,
    DecodeTimeout,
    DecodeWorker,
    available_backends,
    backends,
    failure_reason,
    open_reader,
)
from pipeline.synthetic.formats import FORMATS, scene_frame, write_format_files

# Small clips: 16 frames of 15 fps from 1.6 s files (24 samples: one full clip, one padded).
INPUTS = ClipInputs(fps=15.0, resize=(256, 256), crop=224, clip_len=16, clip_stride=16)
EXACT = ClipInputs(
    fps=15.0, resize=(256, 256), crop=224, clip_len=16, clip_stride=16, resize_method="exact"
)
DECORD_OPENS = {"h264", "vp9_webm", "hevc10_mkv", "hevc_mov", "mjpeg_avi", "vfr", "rotated"}
DECORD_OPENS |= {"yuv444"}  # decord cannot open AV1 (mp4, webm) nor this MPEG-TS
TORCHCODEC = available_backends()["torchcodec"]


@pytest.fixture(scope="session")
def formats(tmp_path_factory):
    return write_format_files(tmp_path_factory.mktemp("formats"))


def _clips(path, inputs=INPUTS, decoder="pyav"):
    stream = ClipStream(str(path), inputs, decoder)
    return stream.info, np.stack([frames for _, _, _, frames in stream])


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_kind_decodes_upright_at_its_times(formats, kind):
    reader = open_reader("pyav", str(formats[kind]), None)
    info = reader.info
    assert (info.width, info.height) == (128, 96)
    assert info.rotation == (270 if kind == "rotated" else 0)  # 90 degrees clockwise
    assert info.variable_rate == (kind == "vfr")
    assert info.duration == pytest.approx(1.6, abs=0.01)
    indices = list(range(0, info.num_frames, 2))
    frames = reader.frames(indices)
    expected = np.stack([scene_frame(info.times[index]) for index in indices])
    assert np.abs(frames.astype(np.int16) - expected).mean() < 8  # lossy codecs
    reader.close()
    _, clips = _clips(formats[kind])
    assert clips.shape == (2, 16, 224, 224, 3)


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_decord_gives_the_frames_of_pyav(formats, kind):
    if kind not in DECORD_OPENS:
        with pytest.raises(DecodeError, match="not a decodable video"):
            open_reader("decord", str(formats[kind]), None)
        return
    pyav_info, pyav = _clips(formats[kind], EXACT, "pyav")
    decord_info, decord = _clips(formats[kind], EXACT, "decord")
    assert decord_info.rotation == pyav_info.rotation
    assert decord_info.times == pytest.approx(pyav_info.times, abs=1e-3)
    # Same decode at the native size: measured 0/255 mean absolute; 10-bit HEVC 1.45/255
    # (decord's FFmpeg 4 converts 10-bit YUV to RGB with other rounding).
    limit = 2.0 if kind == "hevc10_mkv" else 0.5
    assert np.abs(pyav.astype(np.int16) - decord).mean() < limit


def test_auto_falls_back_per_video(formats, monkeypatch):
    monkeypatch.setattr(backends, "AUTO_ORDER", ("decord", "pyav"))
    assert ClipStream(str(formats["h264"]), INPUTS, "auto").info.backend == "decord"
    # decord cannot open AV1: the next backend decodes it, the video is not lost.
    assert ClipStream(str(formats["av1_webm"]), INPUTS, "auto").info.backend == "pyav"
    with pytest.raises(DecodeError, match="not a decodable video"):
        ClipStream(str(formats["av1_webm"]), INPUTS, "decord")


def test_variable_rate_is_sampled_at_presentation_times(formats):
    info, vfr = _clips(formats["vfr"])
    _, constant = _clips(formats["h264"])
    # The content of each 1/15 s step is in both files: the clips hold the same frames.
    assert np.abs(vfr.astype(np.int16) - constant).mean() < 3
    times = np.asarray(info.times)
    planned = ClipStream(str(formats["vfr"]), INPUTS, "pyav").plans[0].frame_indices
    np.testing.assert_allclose(times[list(planned)], np.arange(16) / 15.0, atol=1e-3)
    # Planned by index at the average rate (the old way), frames show other steps' content.
    naive = plan_clips(info.num_frames, info.fps, 15.0, 16, 16)[0].frame_indices
    assert (np.floor(times[list(naive)] * 15.0 + 1e-6) != np.arange(16)).sum() >= 4


def test_damaged_input_never_stalls(formats, tmp_path):
    data = bytearray(formats["mpegts"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = bytes(3000)  # packets that do not decode
    damaged = tmp_path / "damaged.ts"
    damaged.write_bytes(bytes(data[: int(len(data) * 0.8)]))  # and a cut tail
    started = time.perf_counter()
    info, clips = _clips(damaged)
    assert time.perf_counter() - started < 30
    assert clips.shape[0] >= 1 and info.num_frames < 24
    truncated = tmp_path / "truncated.mp4"  # moov at the end: nothing to plan from
    truncated.write_bytes(formats["h264"].read_bytes()[:3000])
    with pytest.raises(DecodeError):
        ClipStream(str(truncated), INPUTS, "pyav")


@pytest.mark.skipif(TORCHCODEC is not None, reason=f"torchcodec not importable: {TORCHCODEC}")
@pytest.mark.parametrize("kind", ["h264", "vfr", "rotated", "av1_webm"])
def test_torchcodec_gives_the_frames_of_pyav(formats, kind):
    pyav_info, pyav = _clips(formats[kind], EXACT, "pyav")
    info, frames = _clips(formats[kind], EXACT, "torchcodec")
    assert info.rotation == pyav_info.rotation and info.times == pyav_info.times
    assert np.abs(pyav.astype(np.int16) - frames).mean() < 0.5


# ------------------------------------------------------------------- the killable child


@pytest.fixture(scope="module")
def worker():
    os.environ["CRIF_DECODE_FAULT"] = "crash:segfault-me,hang:hang-me"
    try:
        worker = DecodeWorker()
        yield worker
        worker.kill()
    finally:
        del os.environ["CRIF_DECODE_FAULT"]


def test_guarded_clips_equal_in_process_clips(worker, formats):
    with worker.clips(str(formats["rotated"]), INPUTS, "pyav") as clips:
        assert clips.info["backend"] == "pyav" and clips.info["rotation"] == 270
        guarded = np.stack([frames for _, _, _, frames in clips])
    np.testing.assert_array_equal(guarded, _clips(formats["rotated"])[1])


def test_blocked_hung_and_crashing_decodes_fail_in_time(worker, formats, tmp_path):
    quick = Deadline(min_seconds=3.0, seconds_per_second=1.0)
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)  # no writer: opening it never returns
    hang = tmp_path / "hang-me.mp4"
    hang.write_bytes(formats["h264"].read_bytes())
    for path in (pipe, hang):
        started = time.perf_counter()
        with pytest.raises(DecodeTimeout) as caught:
            worker.clips(str(path), INPUTS, "auto", timing=quick)
        assert time.perf_counter() - started < 3.0 + 20.0  # a hang guard: 3 s, not 60 s
        assert failure_reason(caught.value) == "timeout"
    crash = tmp_path / "segfault-me.mp4"
    crash.write_bytes(formats["h264"].read_bytes())
    with pytest.raises(DecodeCrashed, match="SIGSEGV") as caught:
        worker.clips(str(crash), INPUTS, "pyav", timing=quick)
    assert failure_reason(caught.value) == "crashed"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(formats["h264"].read_bytes()[:2000])
    with pytest.raises(DecodeError) as caught:
        worker.clips(str(broken), INPUTS, "pyav", timing=quick)
    assert failure_reason(caught.value) == "undecodable"
    # The replaced child decodes the next video.
    with worker.clips(str(formats["h264"]), INPUTS, "pyav", timing=quick) as clips:
        assert sum(1 for _ in clips) == 2
    assert worker.audio(str(formats["vp9_webm"]))[1] == 48000


# ------------------------------------------------------------ preprocessing of the weights


def test_s3d_config_is_pinned_to_the_torchvision_weights():
    from torchvision.models.video import S3D_Weights

    weights = S3D_Weights.KINETICS400_V1
    transforms, config = weights.transforms(), S3DConfig()
    assert tuple(transforms.resize_size) == config.resize
    assert tuple(transforms.crop_size) == (config.crop, config.crop)
    assert tuple(transforms.mean) == config.mean and tuple(transforms.std) == config.std
    assert transforms.interpolation.value == "bilinear"  # antialias=False inside forward()
    assert weights.meta["min_temporal_size"] <= config.clip_len


def test_exact_resize_equals_the_reference_transforms(shared_data):
    import torch
    from torchvision.models.video import S3D_Weights

    from feature_extractors.s3d import normalize_clips

    reference = S3D_Weights.KINETICS400_V1.transforms()
    config = S3DConfig()
    for name in ("mmaction2_demo.mp4", "v_GGSY1Qvo990.mp4"):
        path = str(shared_data / "videos" / name)
        indices = ClipStream(path, EXACT, "pyav").plans[0].frame_indices
        native = open_reader("pyav", path, None).frames(sorted(set(indices)))  # (16, H, W, 3)
        expected = reference(torch.from_numpy(native).permute(0, 3, 1, 2))  # (3, 16, 224, 224)
        _, clips = _clips(path, EXACT)
        ours = normalize_clips(torch.from_numpy(clips[:1]), config.mean, config.std)[0]
        std = torch.tensor(config.std).view(3, 1, 1, 1)
        difference = ((ours - expected) * std * 255).abs().mean().item()
        assert difference < 0.5, f"{name}: {difference:.3f}/255"


def test_the_recorded_decoder_resize_difference_holds(shared_data):
    """dataset.json states DECODER_RESIZE_DIFFERENCE: it must still be what the code does."""
    means, p99s = [], []
    for name in DECODER_RESIZE_DIFFERENCE["measured_on"]:
        path = str(shared_data / "videos" / name)
        scaled = next(iter(ClipStream(path, INPUTS, "pyav")))[3].astype(np.int16)
        exact = next(iter(ClipStream(path, EXACT, "pyav")))[3].astype(np.int16)
        difference = np.abs(scaled - exact)  # pixel values of 255
        means.append(difference.mean())
        p99s.append(np.percentile(difference, 99))
    assert max(means) == pytest.approx(DECODER_RESIZE_DIFFERENCE["mean_abs_255"], abs=0.01)
    assert max(p99s) == DECODER_RESIZE_DIFFERENCE["p99_255"]


def test_every_ffmpeg_container_is_found(tmp_path):
    from pipeline.ingest.sources import find_videos

    names = ["a.ts", "b.M2TS", "c.mts", "d.m4v", "e.3gp", "f.flv", "g.mpg", "h.mpeg"]
    names += ["i.wmv", "j.ogv", "k.mxf", "l.mp4", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(find_videos(str(tmp_path))) == sorted("abcdefghijkl")


def test_failures_keep_one_current_row_per_video(tmp_path):
    from pipeline import store

    old = {"video_id": "v1", "path": "p", "stage": "decode", "error": "old"}
    store.write_failures(tmp_path, [old], "visual-aaaa")  # format 1: a file per run
    store.write_failures(tmp_path, [old], "visual-bbbb")
    failed = {
        "video_id": "v1",
        "path": "p",
        "stage": "decode",
        "error": "late",
        "reason": "timeout",
    }
    other = {"video_id": "v2", "path": "q", "stage": "decode", "error": "e", "reason": "crashed"}
    store.record_failures(tmp_path, "visual", [failed, other])
    store.record_failures(tmp_path, "audio", [{**other, "stage": "audio"}])
    rows = {(r["video_id"], r["modality"]): r for r in store.read_failures(tmp_path).to_pylist()}
    assert len(rows) == 3 and len(list((tmp_path / "_failures").iterdir())) == 1
    assert rows["v1", "visual"]["attempts"] == 3 and rows["v1", "visual"]["reason"] == "timeout"
    assert rows["v1", "visual"]["error"] == "late" and rows["v2", "visual"]["attempts"] == 1
    store.record_failures(tmp_path, "visual", [other], resolved={"v1"})  # v1 decodes now
    rows = {(r["video_id"], r["modality"]): r for r in store.read_failures(tmp_path).to_pylist()}
    assert set(rows) == {("v2", "visual"), ("v2", "audio")}
    assert rows["v2", "visual"]["attempts"] == 2 and rows["v2", "audio"]["attempts"] == 1


def test_failures_are_current_per_video_and_stage(tmp_path):
    from pipeline import store

    def current():
        rows = store.read_failures(tmp_path).to_pylist()
        return {(r["video_id"], r["modality"], r["stage"]): r for r in rows}

    missing = {"video_id": "v1", "path": "", "stage": "manifest", "error": "video file not found"}
    store.write_failures(tmp_path, [missing], "visual-aaaa")  # format 1
    store.record_failures(tmp_path, "visual", [{**missing, "reason": "not_found"}], now="t1")
    store.record_failures(tmp_path, "audio", [{**missing, "reason": "not_found"}], now="t1")
    assert current()["v1", "visual", "manifest"]["attempts"] == 2
    assert current()["v1", "audio", "manifest"]["attempts"] == 1  # modalities stay apart
    broken = {"video_id": "v1", "path": "v1.mp4", "stage": "decode", "error": "bad"}
    for run in ("t2", "t3"):  # found now, but undecodable: the manifest row is not current
        store.record_failures(tmp_path, "visual", [{**broken, "reason": "undecodable"}], now=run)
    rows = current()
    assert set(rows) == {("v1", "visual", "decode"), ("v1", "audio", "manifest")}
    assert rows["v1", "visual", "decode"]["attempts"] == 2
    assert rows["v1", "visual", "decode"]["time"] == "t3"
    assert rows["v1", "visual", "decode"]["reason"] == "undecodable"
    assert len(store.read_failures(tmp_path)) == 2  # no row appended per run
