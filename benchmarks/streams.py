"""How many live 15 fps camera streams one machine keeps in real time, and their latency.

    python benchmarks/streams.py                       # 64-frame windows, hop 32, 2 cores
    python benchmarks/streams.py --modes eager channels_last compile --onnx
    python benchmarks/streams.py --live 1 2            # + the real service on N UDP streams
    python benchmarks/streams.py --smoke               # 16-frame windows, 1 repeat

Two measurements on a random-weight model (the compute of any S3D checkpoint):

1. Costs, in this process: decoding one second of a 15 fps stream (MPEG-4 in MPEG-TS, PyAV,
   converted and scaled to 256x256 by the ingest's own ``rgb_frame``) at 320x240 and 1280x720,
   in core-seconds; and one window through S3D + the CRIF head per execution mode (all
   threads, batch 1 and 4), in seconds. A stream costs ``decode + (fps / hop) * window``
   seconds per second; streams in real time = cores / (decode + windows/s * window * cores)
   (the model uses every core while it runs, decoding one). An estimate from the costs.
2. ``--live N``: the service itself (Ray Serve, default settings) with N publishers of 320x240
   MPEG-TS over UDP on loopback for ``--seconds``: windows scored and dropped, latency p50/p95
   from ``GET /status``. The publishers run on the same cores (their encoding is load too).

Writes OUT/streams.json.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    base_parser,
    interleaved,
    median,
    print_table,
    write_result,
)

FPS = 15.0
SIZES = {"320x240": (320, 240), "1280x720": (1280, 720)}


def encoded_stream(size: tuple[int, int], seconds: float) -> bytes:
    """``seconds`` of a moving pattern, MPEG-4 in MPEG-TS (what the tests publish)."""
    import av
    import numpy as np

    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg4", rate=int(FPS))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"g": "15"}
        y, x = np.mgrid[0:height, 0:width]
        for index in range(int(seconds * FPS)):
            image = np.stack([(x + 7 * index) % 256, (y + 3 * index) % 256, (x + y) % 256], -1)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_seconds(data: bytes) -> float:
    """Core-seconds to decode and convert every frame (one thread, as an ingest does)."""
    import av
    from av.video.reformatter import VideoReformatter

    from pipeline.decode.backends import rgb_frame

    reformatter = VideoReformatter()
    started = time.process_time()
    with av.open(io.BytesIO(data)) as container:
        container.streams.video[0].codec_context.thread_count = 1
        for frame in container.decode(video=0):
            rgb_frame(reformatter, frame, (256, 256), 0)
    return time.process_time() - started


def write_random_model(directory: Path, clip_len: int) -> Path:
    """A CRIF model directory on random S3D weights with ``clip_len``-frame clips."""
    import torch

    from feature_extractors import build_extractor
    from pipeline.artifact import write_checkpoint
    from pipeline.crif.model import CRIFConfig, build_model

    extractor = build_extractor(
        "s3d", {"weights": "random", "clip_len": clip_len, "clip_stride": clip_len}
    )
    config = CRIFConfig(num_classes=10, semantic_dim=8, hidden_dim=64, shared_dim=64, rho=32)
    torch.manual_seed(0)
    info = {
        "format": "crif-checkpoint/1",
        "epoch": 0,
        "model_config": config.to_dict(),
        "task": "single_label",
        "class_names": [f"class_{index}" for index in range(10)],
        "modalities": {"visual": extractor.describe()},
    }
    write_checkpoint(directory / "model", build_model(config).state_dict(), info)
    return directory


def window_costs(run: Path, modes: list[str], onnx: bool, repeats: int) -> list[dict]:
    """Seconds per window (S3D + CRIF head) per execution mode, at batch 1 and 4."""
    import numpy as np
    import pyarrow as pa

    from feature_extractors import get_extractor
    from pipeline.artifact import model_id, read_checkpoint_info, resolve_model_dir
    from pipeline.extract.workers import ExtractorActor
    from pipeline.score.batch import CRIFScorer, visual_description

    model_dir = resolve_model_dir(run)
    description = visual_description(read_checkpoint_info(model_dir))
    head = CRIFScorer(str(model_dir), 5, model_id(model_dir))
    config = description["config"]
    shape = (config["clip_len"], config["crop"], config["crop"], 3)
    clips = np.random.default_rng(0).integers(0, 256, (4, *shape), dtype=np.uint8)
    variants, runners = {}, {}
    for mode in modes:
        options = {"execution": mode, "expected_clips": 10**6}
        actor = ExtractorActor(get_extractor("s3d"), config, "cpu", options=options)

        def run_torch(batch, actor=actor):
            features = actor({"frames": clips[:batch], "error": np.array([""] * batch)})["feature"]
            sequences = [[row] for row in features.tolist()]
            visual = pa.array(sequences, pa.list_(pa.list_(pa.float32())))
            head(pa.table({"video_id": [str(i) for i in range(batch)], "visual": visual}))

        runners[actor.extractor.execution] = run_torch
    if onnx:
        runners["onnx"] = _onnx_runner(run, clips)
    for name, runner in runners.items():
        runner(1)  # warm-up (and a compiled package's load)
        for batch in (1, 4):
            variants[(name, batch)] = lambda runner=runner, batch=batch: _timed(runner, batch)
    times = interleaved(variants, repeats)
    return [
        {"mode": name, "batch": batch, "window_s": round(median(times[(name, batch)]) / batch, 3)}
        for name, batch in variants
    ]


def _timed(runner, batch: int) -> float:
    started = time.perf_counter()
    runner(batch)
    return time.perf_counter() - started


def _onnx_runner(run: Path, clips):
    from pipeline.edge.export import ExportConfig, export_model
    from pipeline.edge.runtime import EdgeModel

    out = Path(tempfile.mkdtemp()) / "edge"
    export_model(ExportConfig(model=str(run), out=str(out)))
    model = EdgeModel.load(out)
    return lambda batch: [model.classify_clips([clip]) for clip in clips[:batch]]


def live_run(run: Path, streams: int, seconds: float) -> dict:
    """The real service with ``streams`` UDP publishers (320x240) for ``seconds``."""
    import requests
    from ray import serve

    from pipeline.serve.app import ServeSettings, build_application

    token = "benchmark-token-0123456789"
    os.environ["CRIF_SERVE_TOKEN"] = token
    port = _free_port(socket.SOCK_STREAM)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(ServeSettings(model=str(run), port=port)), name="bench")
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    publishers = []
    publisher = (Path(__file__).resolve().parents[1] / "tests" / "test_serve.py").read_text()
    code = publisher.split('PUBLISHER = r"""', 1)[1].split('"""', 1)[0]
    try:
        for index in range(streams):
            url = f"udp://127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"
            requests.post(
                base + "/streams", json={"camera": f"cam{index}", "url": url}, headers=headers
            ).raise_for_status()
            publishers.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, url + "?pkt_size=1316", "mpegts"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(seconds)
        status = requests.get(base + "/status", headers=headers, timeout=60).json()
    finally:
        for process in publishers:
            process.kill()
        serve.shutdown()
    rows = status["streams"]
    made = sum(row["windows_made"] for row in rows)
    return {
        "streams": streams,
        "seconds": seconds,
        "execution": status["model"]["execution"],
        "windows_made": made,
        "windows_scored": sum(row["windows_scored"] for row in rows),
        "windows_dropped": sum(row["windows_dropped"] for row in rows),
        "dropped_fraction": round(sum(row["windows_dropped"] for row in rows) / max(1, made), 3),
        "latency_p50_s": max((row["latency_p50_s"] or 0) for row in rows),
        "latency_p95_s": max((row["latency_p95_s"] or 0) for row in rows),
        "mean_batch_size": [r["mean_batch_size"] for r in status["replicas"].values()],
    }


def _free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["eager", "channels_last"])
    parser.add_argument("--onnx", action="store_true", help="also the exported ONNX model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip-len", type=int, default=64, help="frames per window")
    parser.add_argument("--live", type=int, nargs="*", default=[], help="live runs: N streams")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per live run")
    args = parser.parse_args(argv)
    clip_len, repeats = (16, 1) if args.smoke else (args.clip_len, args.repeats)
    hop = clip_len // 2
    cores = len(os.sched_getaffinity(0))
    decode = {}
    for name, size in SIZES.items():
        data = encoded_stream(size, 2.0 if args.smoke else 10.0)
        seconds = median([decode_seconds(data) for _ in range(repeats)])
        decode[name] = seconds / (2.0 if args.smoke else 10.0)  # core-s per stream-second
    run = write_random_model(Path(tempfile.mkdtemp()) / "run", clip_len)
    costs = window_costs(run, args.modes, args.onnx, repeats)
    windows_per_s = FPS / hop
    capacity = []
    for cost in costs:
        for name, seconds in decode.items():
            load = decode[name] + windows_per_s * cost["window_s"] * cores  # core-s per s
            capacity.append(
                {
                    **cost,
                    "stream": name,
                    "decode_core_s_per_s": round(seconds, 4),
                    "streams_real_time": round(cores / load, 2),
                    # latency when keeping up: one window's compute (+ batching wait)
                    "latency_s": round(cost["window_s"] * cost["batch"], 2),
                }
            )
    columns = ["mode", "batch", "stream", "window_s", "decode_core_s_per_s"]
    print_table(
        f"streams at {FPS:g} fps, windows of {clip_len} frames every {hop} ({cores} cores)",
        capacity,
        [*columns, "streams_real_time", "latency_s"],
    )
    live = []
    if args.live:
        from pipeline.common.ray_utils import init_ray

        init_ray(None, num_cpus=cores)
        for streams in args.live:
            live.append(live_run(run, streams, 20.0 if args.smoke else args.seconds))
        print_table("live service (320x240 UDP streams)", live, list(live[0]))
    write_result(
        args.out,
        "streams",
        {"clip_len": clip_len, "hop": hop, "fps": FPS, "capacity": capacity, "live": live},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
