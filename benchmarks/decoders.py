"""Decoder backends side by side: frames/s per core, the guarded child's overhead, resize modes.

    python benchmarks/decoders.py            # shared clips + generated files, every backend
    python benchmarks/decoders.py --smoke    # one file, one repeat: checks it runs

For each installed backend (pyav, decord, torchcodec) and each video (the shared real clips
in ../shared/data/videos and the files of pipeline/synthetic/formats.py at 320x240, 4 s):
the time to deliver every S3D clip (16 frames at 15 fps, 256x256, crop 224; one thread) in
this process, as native frames covered per second (the rate a core ingests video at) and
as sampled frames per second. Then, for pyav: the same through the guarded decode child
(pipeline/decode/guard.py, warm: started once) vs in this process, and the pixel difference
of the "decoder" resize (FFmpeg bilinear) from the "exact" one (the S3D weights' transforms).
Writes OUT/decoders.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    base_parser,
    machine_info,
    median,
    print_table,
    write_result,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def _inputs(method: str = "decoder"):
    from feature_extractors.base import ClipInputs

    return ClipInputs(
        fps=15.0, resize=(256, 256), crop=224, clip_len=16, clip_stride=16, resize_method=method
    )


def _videos(smoke: bool, directory: Path) -> dict[str, Path]:
    from pipeline.synthetic.formats import write_format_files

    videos = {path.name: path for path in sorted(SHARED.glob("*")) if path.is_file()}
    kinds = ("h264",) if smoke else ("h264", "av1_mp4", "vp9_webm", "hevc10_mkv", "mjpeg_avi")
    kinds += () if smoke else ("mpegts", "vfr", "rotated")
    generated = write_format_files(directory, duration=4.0, width=320, height=240, kinds=kinds)
    videos.update({f"{kind} (320x240)": path for kind, path in generated.items()})
    return dict(list(videos.items())[:1]) if smoke else videos


def _time_in_process(path: Path, backend: str, repeats: int, method: str = "decoder"):
    from pipeline.decode import ClipStream

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        stream = ClipStream(str(path), _inputs(method), backend)
        clips = sum(1 for _ in stream)
        seconds.append(time.perf_counter() - started)
    return median(seconds), stream.info, clips


def _time_guarded(path: Path, backend: str, repeats: int) -> float:
    from pipeline.decode import DecodeWorker

    worker = DecodeWorker()
    with worker.clips(str(path), _inputs(), backend) as clips:  # start the child once
        sum(1 for _ in clips)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        with worker.clips(str(path), _inputs(), backend) as clips:
            sum(1 for _ in clips)
        seconds.append(time.perf_counter() - started)
    worker.kill()
    return median(seconds)


def _resize_difference(path: Path) -> dict:
    import numpy as np

    from pipeline.decode import ClipStream

    scaled = next(iter(ClipStream(str(path), _inputs("decoder"), "pyav")))[3].astype(np.int16)
    exact = next(iter(ClipStream(str(path), _inputs("exact"), "pyav")))[3].astype(np.int16)
    difference = np.abs(scaled - exact)
    return {"mean_abs": float(difference.mean()), "p99": float(np.percentile(difference, 99))}


def main(argv=None) -> dict:
    import torch

    from pipeline.decode import available_backends

    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.smoke else args.repeats
    installed = [name for name, reason in available_backends().items() if reason is None]
    rows, guarded, resize = [], [], []
    with tempfile.TemporaryDirectory() as directory:
        for name, path in _videos(args.smoke, Path(directory)).items():
            for backend in installed:
                try:
                    seconds, info, clips = _time_in_process(path, backend, repeats)
                except Exception as error:  # noqa: BLE001 - a backend that cannot: a row
                    rows.append({"video": name, "backend": backend, "error": str(error)[:60]})
                    continue
                rows.append(
                    {
                        "video": name,
                        "backend": backend,
                        "native_frames_per_s": info.num_frames / seconds,
                        "sampled_frames_per_s": clips * 16 / seconds,
                        "seconds": seconds,
                    }
                )
            in_process = _time_in_process(path, "pyav", repeats)[0]
            child = _time_guarded(path, "pyav", repeats)
            guarded.append(
                {
                    "video": name,
                    "in_process_s": in_process,
                    "guarded_s": child,
                    "overhead": child / in_process,
                }
            )
            if path.parent == SHARED:
                resize.append({"video": name, **_resize_difference(path)})
    print_table(
        "Decode to S3D clips, one thread (native frames covered per second)",
        rows,
        ["video", "backend", "native_frames_per_s", "sampled_frames_per_s", "error"],
    )
    print_table(
        "pyav in this process vs the guarded child (warm)",
        guarded,
        ["video", "in_process_s", "guarded_s", "overhead"],
    )
    print_table(
        "decoder resize vs exact (pixel values of 255)", resize, ["video", "mean_abs", "p99"]
    )
    result = {
        "machine": machine_info(),
        "installed": installed,
        "rows": rows,
        "guarded": guarded,
        "resize_difference": resize,
    }
    write_result(args.out, "decoders", result)
    return result


if __name__ == "__main__":
    main()
