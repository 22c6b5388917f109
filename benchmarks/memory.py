"""Peak memory of the extraction job: flat in the number of videos and in video length.

    python benchmarks/memory.py             # 10 vs 100 videos, a 10 s vs a 10 min video
    python benchmarks/memory.py --smoke     # 1 vs 2 tiny videos: checks that it runs

Each case is one whole `jobs/extract.py` process (visual features, random S3D weights,
synthetic 160x120 videos); its peak memory is the largest sum of PSS (proportional set size)
over the driver and every process below it (Ray's GCS, raylet, workers, the S3D actor),
sampled every 0.25 s. PSS splits shared pages, so the object store is counted once.
Decoding is streamed (the --decoder backend in the guarded decode child, one clip requested
at a time: no decoding ahead) and at most two calls are in flight in the S3D actor, so the
peak should not grow with the job: the goal is within 10%. The length pair uses 96x72
videos, so the 10 min one is quick to write, and S3D batches of 2 clips (the 10 s video's
clips at its stride): the model's activations set the peak, and a batch of 2 against
batches of 4 would compare batch sizes, not lengths.
Writes OUT/memory.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, base_parser, print_table, run_process, write_result  # noqa: E402


def make_videos(directory: Path, count: int, duration: float, small: bool = False) -> dict:
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    size = {"width": 96, "height": 72} if small else {}
    config = SyntheticConfig(num_videos=count, duration=duration, audio=False, seed=count, **size)
    return generate_synthetic_dataset(directory, config)


def extract(
    data: dict, out: Path, clip_len: int, clip_stride: int, decoder: str = "auto", batch: int = 4
) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a store left by an earlier run would be skipped
    command = [
        sys.executable,
        str(REPO / "jobs" / "extract.py"),
        "--videos",
        str(data["videos"]),
        "--annotations",
        *[str(path) for path in data["annotations"]],
        "--out",
        str(out),
        "--modalities",
        "visual",
        "--s3d-weights",
        "random",
        "--clip-len",
        str(clip_len),
        "--clip-stride",
        str(clip_stride),
        "--s3d-execution",
        "channels_last",  # the same model in every case, whatever the compile cache holds
        "--decoder",
        decoder,
        "--clip-batch-size",
        str(batch),
    ]
    return run_process(command, env={"RAY_ADDRESS": "", "PYTHONWARNINGS": "ignore"}, memory=True)


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--decoder", default="auto", help="auto, pyav, decord or torchcodec")
    parser.add_argument("--only", choices=["videos", "length"], help="one comparison only")
    args = parser.parse_args(argv)
    clip_len = args.clip_len
    # (comparison, case, videos, seconds each, clip stride): a pair per comparison.
    if args.smoke:
        cases = [("videos", "1 video", 1, 2.0, clip_len), ("videos", "2 videos", 2, 2.0, clip_len)]
    else:
        sparse = 8 * clip_len  # a long video with few clips: its decode streams 9000 frames
        cases = [
            ("videos", "10 videos", 10, 2.0, clip_len),
            ("videos", "100 videos", 100, 2.0, clip_len),
            ("length", "10 s video", 1, 10.0, sparse),
            ("length", "10 min video", 1, 600.0, sparse),
        ]
    cases = [case for case in cases if args.only in (None, case[0])]
    work = Path(args.out) / "memory-work"
    rows = []
    for comparison, case, count, seconds, stride in cases:
        small = comparison == "length"
        data = make_videos(
            work / f"{count}x{seconds:g}s{'-small' if small else ''}", count, seconds, small
        )
        store = work / f"store-{count}x{seconds:g}s-{stride}-{args.decoder}"
        # The 10 s video has 2 clips at the sparse stride: both length cases run model batches
        # of 2, so the pair compares video length, not a half-full batch with full ones.
        batch = 2 if comparison == "length" else 4
        result = extract(data, store, clip_len, stride, args.decoder, batch)
        rows.append(
            {
                "comparison": comparison,
                "case": case,
                "videos": count,
                "seconds_each": seconds,
                "clip_stride": stride,
                "peak_mib": result["peak_pss_mib"],
                "process_s": result["seconds"],
                "peak_breakdown_mib": result["peak_breakdown_mib"],
            }
        )
        print(f"  {case}: peak {result['peak_pss_mib']:.0f} MiB in {result['seconds']:.0f} s")
    growth = {}
    for comparison in dict.fromkeys(row["comparison"] for row in rows):
        small, large = [row for row in rows if row["comparison"] == comparison]
        growth[comparison] = large["peak_mib"] / small["peak_mib"]
        large["vs_small"] = growth[comparison]
    print_table(
        f"Peak memory of extraction (PSS of the process tree), clip_len {clip_len}",
        rows,
        ["comparison", "case", "clip_stride", "peak_mib", "vs_small", "process_s"],
    )
    checks = {
        name: {"ratio": ratio, "flat_within_10pct": ratio <= 1.10} for name, ratio in growth.items()
    }
    print(", ".join(f"{name}: x{check['ratio']:.3f}" for name, check in checks.items()))
    result = {"clip_len": clip_len, "decoder": args.decoder, "rows": rows, "checks": checks}
    write_result(args.out, "memory", result)
    return result


if __name__ == "__main__":
    main()
