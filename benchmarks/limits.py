"""Limits of the machine at hand: what the extraction can at best reach here.

    python benchmarks/limits.py              # ~1-2 min on 2 cores
    python benchmarks/limits.py --smoke      # seconds: checks that it runs

- fp32 matmul rate of torch (GFLOP/s), with all threads and with one: the compute roof.
- decord decode rate of the sample videos (frames/s, one thread), at native size and at the
  size the pipeline decodes to (S3D's resize, scaled inside FFmpeg), and per S3D clip.
- S3D FLOPs per clip (torch's FlopCounterMode) and the rate plain eager S3D achieves, as a
  fraction of the matmul rate measured interleaved with it.
Writes OUT/limits.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    SHARED_VIDEOS,
    base_parser,
    interleaved,
    matmul_gflops,
    median,
    print_table,
    s3d_flops_per_clip,
    write_result,
)


def sample_videos(smoke: bool, scratch: Path) -> list[Path]:
    """The real sample videos; a small synthetic one when they are absent."""
    if SHARED_VIDEOS.is_dir():
        videos = sorted(path for path in SHARED_VIDEOS.iterdir() if path.is_file())
        return videos[:1] if smoke else videos
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    info = generate_synthetic_dataset(scratch, SyntheticConfig(num_videos=1, duration=2.0))
    return sorted(Path(info["videos"]).glob("*.mp4"))


def decode_rates(videos: list[Path], size: tuple[int, int], clip_len: int) -> list[dict]:
    """frames/s of decord (one thread) per video: every frame at native and reduced size, and
    the pipeline's own per-clip decode (`iter_clips`: seek, resample, preprocess)."""
    import decord

    from feature_extractors.s3d import S3DConfig
    from pipeline.ingest.decode import iter_clips

    config = S3DConfig(clip_len=clip_len, clip_stride=clip_len)
    rows = []
    for path in videos:
        row = {"video": path.name}
        for label, kwargs in (("native", {}), ("reduced", {"width": size[1], "height": size[0]})):
            started = time.perf_counter()
            reader = decord.VideoReader(str(path), num_threads=1, **kwargs)
            frames = len(reader)
            for index in range(frames):
                reader[index].asnumpy()
            row[f"{label}_fps"] = frames / (time.perf_counter() - started)
            row["frames"] = frames
        started = time.perf_counter()
        clips = sum(1 for _ in iter_clips(str(path), config))
        seconds = time.perf_counter() - started
        row.update(clips=clips, seconds_per_clip=seconds / clips)
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clip-len", type=int, default=64, help="S3D clip length (frames)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clip_len, args.repeats, args.matmul_size = 16, 1, 256

    import torch

    from feature_extractors.s3d import build_s3d_backbone

    threads = torch.get_num_threads()
    out = Path(args.out)
    videos = sample_videos(args.smoke, out / "limits-data")
    decode = decode_rates(videos, (256, 256), args.clip_len)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_s3d_backbone("random")
    model.eval()
    clip = torch.randn(1, 3, args.clip_len, 224, 224)
    flops = s3d_flops_per_clip(args.clip_len)
    seconds_matmul = 0.3 if args.smoke else 2.0

    def timed_s3d() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model(clip)
        return time.perf_counter() - started

    rates = {"matmul": [], "matmul_1_thread": []}

    def matmul_all() -> float:
        rates["matmul"].append(matmul_gflops(args.matmul_size, seconds_matmul))
        return 0.0

    def matmul_one() -> float:
        torch.set_num_threads(1)
        try:
            rates["matmul_1_thread"].append(matmul_gflops(args.matmul_size, seconds_matmul))
        finally:
            torch.set_num_threads(threads)
        return 0.0

    timed_s3d()  # warm-up (oneDNN primitive creation)
    times = interleaved(
        {"matmul": matmul_all, "matmul_1_thread": matmul_one, "s3d_eager": timed_s3d},
        args.repeats,
    )
    matmul = median(rates["matmul"])
    s3d_seconds = median(times["s3d_eager"])
    achieved = flops / s3d_seconds / 1e9
    all_frames = sum(row["frames"] for row in decode)
    native_seconds = sum(row["frames"] / row["native_fps"] for row in decode)
    reduced_seconds = sum(row["frames"] / row["reduced_fps"] for row in decode)
    result = {
        "threads": threads,
        "matmul_gflops": matmul,
        "matmul_gflops_1_thread": median(rates["matmul_1_thread"]),
        "matmul_size": args.matmul_size,
        "decode": decode,
        "decode_fps_native": all_frames / native_seconds,
        "decode_fps_reduced": all_frames / reduced_seconds,
        "decode_seconds_per_clip": sum(r["seconds_per_clip"] * r["clips"] for r in decode)
        / sum(r["clips"] for r in decode),
        "s3d_clip": [1, 3, args.clip_len, 224, 224],
        "s3d_gflop_per_clip": flops / 1e9,
        "s3d_eager_seconds_per_clip": s3d_seconds,
        "s3d_eager_gflops": achieved,
        "s3d_eager_fraction_of_matmul": achieved / matmul,
        "raw": {"rates": rates, "times": times},
    }
    print_table(
        f"Limits ({threads} torch threads; decord one thread)",
        [
            {"measure": "fp32 matmul", "value": matmul, "unit": "GFLOP/s"},
            {
                "measure": "fp32 matmul, 1 thread",
                "value": result["matmul_gflops_1_thread"],
                "unit": "GFLOP/s",
            },
            {
                "measure": "decord decode, native size",
                "value": result["decode_fps_native"],
                "unit": "frames/s",
            },
            {
                "measure": "decord decode, 256x256",
                "value": result["decode_fps_reduced"],
                "unit": "frames/s",
            },
            {
                "measure": f"decode one {args.clip_len}-frame clip (iter_clips)",
                "value": result["decode_seconds_per_clip"],
                "unit": "s",
            },
            {
                "measure": f"S3D FLOPs per clip ({args.clip_len}x224x224)",
                "value": flops / 1e9,
                "unit": "GFLOP",
            },
            {"measure": "S3D eager time per clip", "value": s3d_seconds, "unit": "s"},
            {"measure": "S3D eager achieved", "value": achieved, "unit": "GFLOP/s"},
            {"measure": "S3D eager / matmul", "value": achieved / matmul, "unit": "fraction"},
        ],
        ["measure", "value", "unit"],
    )
    print_table(
        "Decode per video",
        decode,
        ["video", "frames", "native_fps", "reduced_fps", "clips", "seconds_per_clip"],
    )
    write_result(args.out, "limits", result)
    return result


if __name__ == "__main__":
    main()
