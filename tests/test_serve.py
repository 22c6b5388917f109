"""The live service: URL/token policy, window cutting, and real UDP/RTSP streams on loopback.

The live tests run one Serve application (tiny CRIF model, random S3D, 16-frame windows)
on the session's Ray and publish generated video with PyAV: MPEG-TS over UDP, and RTSP to
the service's FFmpeg listener. A window's probabilities must equal jobs/score.py's on a
lossless file of the window's frames.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.serve.ingest import FrameSampler, WindowCutter, _Pending
from pipeline.serve.security import (
    TOKEN_ENV,
    UnsafeURL,
    authorized,
    check_stream_url,
    read_token,
    redact_url,
    token_digest,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"

# A camera: 320x240 at 15 fps, a moving gradient, until killed. argv: url, format.
PUBLISHER = r"""
import sys, time
import av, numpy as np
url, fmt = sys.argv[1], sys.argv[2]
while True:
    try:
        out = av.open(url, "w", format=fmt)
        break
    except Exception:
        time.sleep(0.3)  # RTSP: the service's listener is not up yet
stream = out.add_stream("mpeg4", rate=15)
stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
stream.codec_context.options = {"g": "15"}
y, x = np.mgrid[0:240, 0:320]
start, index = time.time(), 0
while True:
    image = np.stack([(x + 7 * index) % 256, (y * 2 + 3 * index) % 256, (x + y) % 256], -1)
    frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
    frame.pts = index
    out.mux(stream.encode(frame))
    index += 1
    time.sleep(max(0.0, start + index / 15 - time.time()))
"""


# ---------------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "/etc/passwd",
        "relative/video.mp4",
        "concat:/etc/passwd|/etc/hosts",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "pipe:0",
        "data:video/mp4;base64,AAAA",
        "ftp://host/video.ts",
        "gopher://host/",
        "rtsp://",
        "rtsp:///path",
        "http://host/a b",
        "udp://127.0.0.1:99999",
    ],
)
def test_unsafe_urls_are_refused(url):
    with pytest.raises(UnsafeURL):
        check_stream_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://10.0.0.5:554/stream1",
        "rtsps://cam.local/live",
        "udp://127.0.0.1:5000",
        "rtp://239.0.0.1:5004",
        "srt://127.0.0.1:9000?mode=caller",
        "https://example.com/live/index.m3u8",
        "http://user:secret@10.0.0.7/mjpeg",
    ],
)
def test_network_urls_are_accepted(url):
    assert check_stream_url(url) == url


def test_passwords_are_redacted():
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert redact_url("udp://127.0.0.1:5000") == "udp://127.0.0.1:5000"


def test_tokens(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token() is None
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ValueError, match="shorter"):
        read_token()
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert read_token(str(tmp_path / "token")) == TOKEN  # the file wins over the variable
    digest = token_digest(TOKEN)
    assert authorized(f"Bearer {TOKEN}", digest) and authorized(f"bearer  {TOKEN}", digest)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not authorized(header, digest), header
    assert authorized(None, None)  # --insecure


def test_service_refuses_to_start_without_a_token(monkeypatch, capsys):
    from jobs.serve import main

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["--model", "unused"]) == 2
    assert "no API token" in capsys.readouterr().err
    assert main(["--model", "unused", "--insecure", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


def test_sampler_equals_the_batch_plan():
    """Streamed frames resampled by FrameSampler take the frames plan_clips_at takes."""
    from feature_extractors.clip_plan import plan_clips_at

    generator = np.random.default_rng(0)
    for native in (7.5, 15.0, 25.0, 29.97, 60.0):
        gaps = (1 / native) * generator.uniform(0.6, 1.4, size=300)
        times = np.concatenate([[0.0], np.cumsum(gaps)])
        sampler, taken = FrameSampler(15.0), []
        for index, stamp in enumerate(times):
            taken += [(k, item) for k, item in sampler.push(float(stamp), index)]
        duration = float(times[-1])  # targets past the last frame wait for the next frame
        plans = plan_clips_at(times, duration, 15.0, clip_len=1, clip_stride=1)
        expected = [plan.frame_indices[0] for plan in plans]
        assert [k for k, _ in taken] == list(range(len(taken)))
        assert [item for _, item in taken] == expected[: len(taken)]
        assert len(expected) - len(taken) <= 1, native


def test_windows_slide_by_the_hop():
    cutter = WindowCutter(clip_len=4, hop=2)
    windows = [cut for k in range(10) if (cut := cutter.push(k, k)) is not None]
    assert [(start, frames) for start, frames in windows] == [
        (0, [0, 1, 2, 3]), (2, [2, 3, 4, 5]), (4, [4, 5, 6, 7]), (6, [6, 7, 8, 9]),
    ]  # fmt: skip
    spaced = WindowCutter(clip_len=2, hop=3)
    assert [c[0] for k in range(9) if (c := spaced.push(k, k))] == [0, 3, 6]


def test_a_full_queue_drops_the_oldest_window():
    pending = _Pending(1)
    assert pending.put("a") is None
    assert pending.put("b") == "a"  # dropped whole, counted by the caller
    assert pending.get(0.1) == "b" and pending.get(0.01) is None


# ---------------------------------------------------------------------------- live


def _free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _publish(url: str, fmt: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, url, fmt],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(10)


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    import requests
    from ray import serve
    from test_edge import write_model

    from pipeline.serve.app import ServeSettings, build_application

    root = tmp_path_factory.mktemp("serve")
    run = write_model(root / "run")
    port = _free_port()
    os.environ[TOKEN_ENV] = TOKEN
    settings = ServeSettings(
        model=str(run),
        port=port,
        max_streams=2,
        model_cpus=0.5,
        ingest_cpus=0.05,
        read_timeout=3.0,
        open_timeout=30.0,
        record_windows=str(root / "windows"),
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(settings), name="crif-test", route_prefix="/")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    yield {"base": f"http://127.0.0.1:{port}", "http": session, "root": root, "run": run}
    serve.shutdown()
    os.environ.pop(TOKEN_ENV, None)


def _wait(service, camera: str, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        listing = service["http"].get(service["base"] + "/streams", timeout=30).json()
        status = next(s for s in listing["streams"] if s["camera"] == camera)
        if condition(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last status: {status}")
        time.sleep(0.5)


@pytest.mark.slow
def test_requests_without_the_token_are_refused(service):
    import requests

    base = service["base"]
    routes = [
        ("get", "/streams"), ("post", "/streams"), ("delete", "/streams/x"),
        ("get", "/streams/x/predictions"), ("get", "/streams/x/events"), ("get", "/status"),
    ]  # fmt: skip
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        for method, path in routes:
            answer = getattr(requests, method)(base + path, headers=headers, timeout=10)
            assert answer.status_code == 401, (method, path, headers)
    assert service["http"].get(base + "/streams", timeout=10).status_code == 200


@pytest.mark.slow
def test_local_file_urls_are_refused(service):
    for url in ("file:///etc/passwd", "/etc/passwd", "concat:/etc/passwd", "pipe:0"):
        answer = service["http"].post(
            service["base"] + "/streams", json={"camera": "evil", "url": url}, timeout=10
        )
        assert answer.status_code == 400, url
    listing = service["http"].get(service["base"] + "/streams", timeout=10).json()
    assert listing["streams"] == []


@pytest.mark.slow
def test_udp_stream_is_scored_and_recovers_from_a_drop(service):
    base, http = service["base"], service["http"]
    port = _free_port(socket.SOCK_DGRAM)
    url = f"udp://127.0.0.1:{port}"
    answer = http.post(base + "/streams", json={"camera": "udp1", "url": url}, timeout=10)
    assert answer.status_code == 201, answer.text
    assert http.post(base + "/streams", json={"camera": "udp1", "url": url}).status_code == 409
    publisher = _publish(url + "?pkt_size=1316", "mpegts")
    try:
        first = _wait(service, "udp1", lambda s: s["windows_scored"] >= 2)
        assert first["state"] == "streaming" and first["source"] == {"width": 320, "height": 240}
        with http.get(base + "/streams/udp1/events", stream=True, timeout=30) as events:
            lines = events.iter_lines(decode_unicode=True)
            data = next(line for line in lines if line.startswith("data: "))
        event = json.loads(data[len("data: ") :])
        assert event["camera"] == "udp1" and len(event["top_k"]) == 5
        _stop(publisher)  # the camera drops
        dropped = _wait(service, "udp1", lambda s: s["state"] == "reconnecting")
        assert dropped["reconnects"] >= 1 and dropped["last_error"]
        assert dropped["last_error"].startswith("no data for "), dropped["last_error"]
        publisher = _publish(url + "?pkt_size=1316", "mpegts")  # and comes back
        back = _wait(service, "udp1", lambda s: s["state"] == "streaming" and s["segments"] >= 2)
        deadline = time.monotonic() + 60
        while True:  # a window of the new connection is scored
            found = http.get(base + "/streams/udp1/predictions", timeout=30).json()["predictions"]
            if any(p["segment"] >= 2 for p in found) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        _stop(publisher)
    windows, starts = [p["window"] for p in found], [p["start"] for p in found]
    assert windows == sorted(set(windows)) and starts == sorted(starts)  # across the drop
    assert {p["segment"] for p in found} >= {1, 2}
    assert all(p["end"] - p["start"] == pytest.approx(16 / 15) for p in found)
    status = http.get(base + "/status", timeout=10).json()
    stream = next(s for s in status["streams"] if s["camera"] == "udp1")
    assert stream["latency_p50_s"] is not None and stream["latency_p95_s"] >= 0
    assert sum(r["windows"] for r in status["replicas"].values()) == stream["windows_scored"]
    assert stream["windows_scored"] > back["windows_scored"] or stream["segments"] >= 2
    assert status["window"] == {"clip_len": 16, "hop": 8, "fps": 15.0}


@pytest.mark.slow
def test_rtsp_stream_published_to_the_service(service):
    base, http = service["base"], service["http"]
    url = f"rtsp://127.0.0.1:{_free_port()}/live"
    camera = {"camera": "rtsp1", "url": url, "listen": True}
    answer = http.post(base + "/streams", json=camera, timeout=10)
    assert answer.status_code == 201, answer.text
    full = http.post(base + "/streams", json={"camera": "c3", "url": "udp://127.0.0.1:9"})
    assert full.status_code == 429  # max_streams=2
    _wait(service, "rtsp1", lambda s: s["state"] == "connecting", timeout=30)
    time.sleep(3.0)  # the ingest actor starts, then FFmpeg listens
    publisher = _publish(url, "rtsp")
    try:
        status = _wait(service, "rtsp1", lambda s: s["windows_scored"] >= 2)
    finally:
        _stop(publisher)
    assert status["source"] == {"width": 320, "height": 240}


@pytest.mark.slow
def test_windows_equal_offline_scoring_of_their_frames(service, tmp_path):
    """The recorded frames of scored windows, as lossless files, through jobs/score.py."""
    import pyarrow.parquet as pq
    from ray import serve

    from pipeline.decode.backends import PyAVReader
    from pipeline.score.batch import ScoreConfig, score_videos

    http, base = service["http"], service["base"]
    live = {}
    for camera in ("udp1", "rtsp1"):
        found = http.get(f"{base}/streams/{camera}/predictions", timeout=10).json()["predictions"]
        assert found, camera
        for prediction in found[:2]:
            live[f"{camera}-{prediction['window']}"] = prediction
        assert http.delete(f"{base}/streams/{camera}", timeout=30).status_code == 200
    assert http.get(base + "/streams/udp1/predictions", timeout=10).status_code == 404
    serve.shutdown()  # frees the CPUs for the batch job
    videos = tmp_path / "videos"
    videos.mkdir()
    for key in live:
        camera, window = key.rsplit("-", 1)
        recorded = service["root"] / "windows" / camera / f"{int(window):06d}.mkv"
        (videos / f"{key}.mkv").symlink_to(recorded)
        reader = PyAVReader(str(recorded), size=(256, 256))
        assert reader.info.num_frames == 16 and abs(reader.info.duration - 16 / 15) < 2e-3
        reader.close()
    score_videos(ScoreConfig(model=str(service["run"]), videos=str(videos), out=str(tmp_path)))
    rows = {
        row["video_id"]: row for row in pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    }
    assert set(rows) == set(live)
    differences = {}
    for key, prediction in live.items():
        assert rows[key]["status"] == "ok", rows[key]["error"]
        difference = np.abs(np.subtract(rows[key]["probabilities"], prediction["probabilities"]))
        differences[key] = (float(difference.max()), prediction["batch_size"])
        assert rows[key]["top_k_labels"] == [entry["label"] for entry in prediction["top_k"]]
    assert max(difference for difference, _ in differences.values()) <= 1e-5, differences


def test_the_cluster_serve_config_is_valid():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from pipeline.serve import app

    document = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(document)
    (application,) = schema.applications
    module, _, name = application.import_path.partition(":")
    assert module == "pipeline.serve.app" and getattr(app, name) is app.app_builder
    fields = set(app.ServeSettings.__dataclass_fields__)
    assert set(application.args) <= fields and "model" in application.args
    assert document["http_options"]["port"] == 8000
