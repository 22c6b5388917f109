"""S3D efficiency on this CPU: each execution mode's achieved GFLOP/s as a fraction of the
fp32 matmul rate, measured interleaved in one process.

    python benchmarks/s3d_cpu.py                 # 64x224x224 clips; builds the compiled
                                                 # package once if not cached (minutes)
    python benchmarks/s3d_cpu.py --cold          # also time a build from an empty cache
    python benchmarks/s3d_cpu.py --smoke         # 16-frame clips, no compile: checks it runs

Modes (feature_extractors/s3d.py): eager (torchvision as is), channels_last, compile
(AOTInductor package with freezing, cached on disk). For each: seconds per clip, GFLOP/s,
fraction of matmul, start-up (building the extractor, loading the package), and the largest
relative feature difference from eager. With the compile build time it prints where
"auto" starts to compile (break-even clips). Writes OUT/s3d_cpu.json.

On a shared machine the wall-clock fractions carry the other processes' load; the CPU-time
fractions (GFLOP per second that this process's threads actually ran, against the same for
matmul) are steadier, though they count OpenMP spin-waiting as work.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    base_parser,
    interleaved,
    matmul_rates,
    median,
    print_table,
    s3d_flops_per_clip,
    write_result,
)


def build(mode: str, clip_len: int, cache_dir: Path | None):
    """(extractor, seconds to build it: weights, layout, package load or build)."""
    from feature_extractors.s3d import S3DConfig, S3DExtractor

    config = S3DConfig(weights="random", clip_len=clip_len, clip_stride=clip_len)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = S3DExtractor(config, execution=mode, cache_dir=cache_dir)
    return extractor, time.perf_counter() - started


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clip-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="eager,channels_last,compile")
    parser.add_argument("--cache-dir", help="compiled packages (default: the user cache)")
    parser.add_argument("--cold", action="store_true", help="time a build into an empty cache")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clip_len, args.repeats, args.modes = 16, 1, "eager,channels_last"
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]

    import numpy as np
    import torch

    from feature_extractors.s3d import compile_cache_dir

    if args.threads:
        torch.set_num_threads(args.threads)  # before building: packages are per thread count
    cache_dir = Path(args.cache_dir) if args.cache_dir else compile_cache_dir()
    flops = s3d_flops_per_clip(args.clip_len)
    cold = {}
    if args.cold and "compile" in modes:
        with tempfile.TemporaryDirectory() as empty:
            _, seconds = build("compile", args.clip_len, Path(empty))
            for package in Path(empty).glob("*.pt2"):  # keep it: the next build is a load
                cache_dir.mkdir(parents=True, exist_ok=True)
                if not (cache_dir / package.name).exists():
                    shutil.copy2(package, cache_dir / package.name)
        cold = {"compile_build_seconds": seconds}
        print(f"compile from an empty cache: {seconds:.0f} s")
    extractors, startup = {}, {}
    for mode in modes:
        extractors[mode], startup[mode] = build(mode, args.clip_len, cache_dir)
    clips = extractors[modes[0]].example_input(batch_size=1)  # uint8 (1, L, 224, 224, 3)
    features = {mode: extractor(clips) for mode, extractor in extractors.items()}  # warm-up
    reference = features.get("eager", features[modes[0]])
    difference = {
        mode: float(np.abs(value - reference).max() / np.abs(reference).max())
        for mode, value in features.items()
    }
    rates: list[dict] = []
    cpu_seconds: dict[str, list[float]] = {mode: [] for mode in modes}

    def matmul() -> float:
        rates.append(matmul_rates(256 if args.smoke else 2048, 0.3 if args.smoke else 2.0))
        return 0.0

    def timed(mode):
        def run() -> float:
            started, cpu_started = time.perf_counter(), time.process_time()
            extractors[mode](clips)
            cpu_seconds[mode].append(time.process_time() - cpu_started)
            return time.perf_counter() - started

        return run

    variants = {"matmul": matmul, **{mode: timed(mode) for mode in modes}}
    times = interleaved(variants, args.repeats)
    matmul_rate = median([rate["wall"] for rate in rates])
    matmul_cpu_rate = median([rate["cpu"] for rate in rates])
    rows = []
    for mode in modes:
        seconds = median(times[mode])
        achieved = flops / seconds / 1e9
        achieved_cpu = flops / median(cpu_seconds[mode]) / 1e9
        rows.append(
            {
                "mode": mode,
                "seconds_per_clip": seconds,
                "gflops": achieved,
                "fraction_of_matmul": achieved / matmul_rate,
                "fraction_cpu_time": achieved_cpu / matmul_cpu_rate,
                "speedup_vs_eager": median(times["eager"]) / seconds if "eager" in times else None,
                "startup_seconds": startup[mode],
                "max_relative_difference": difference[mode],
            }
        )
    by_mode = {row["mode"]: row for row in rows}
    if "compile" in by_mode and "channels_last" in by_mode and cold:
        compiled, channels_last = by_mode["compile"], by_mode["channels_last"]
        saving = channels_last["seconds_per_clip"] - compiled["seconds_per_clip"]
        cold["break_even_clips"] = cold["compile_build_seconds"] / saving if saving > 0 else None
    result = {
        "threads": torch.get_num_threads(),
        "clip": [1, 3, args.clip_len, 224, 224],
        "gflop_per_clip": flops / 1e9,
        "matmul_gflops": matmul_rate,
        "matmul_gflops_per_cpu_second": matmul_cpu_rate,
        "modes": rows,
        "compile_cache": str(cache_dir),
        **cold,
        "raw": {"times": times, "cpu_seconds": cpu_seconds, "matmul": rates},
    }
    print_table(
        f"S3D on CPU, {args.clip_len}x224x224 clips, {torch.get_num_threads()} threads, "
        f"matmul {matmul_rate:.1f} GFLOP/s (interleaved, {args.repeats} repeats)",
        rows,
        list(rows[0]),
    )
    if "break_even_clips" in cold:
        print(f"compile pays for itself after {cold['break_even_clips']:.0f} clips")
    write_result(args.out, "s3d_cpu", result)
    return result


if __name__ == "__main__":
    main()
