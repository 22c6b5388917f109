"""Extraction throughput: the Ray Data job against a plain loop, and the model-only bound.

    python benchmarks/extraction.py                  # ~60 clips of 64 frames (minutes)
    python benchmarks/extraction.py --clips 200 --cache warm
    python benchmarks/extraction.py --smoke          # 2 tiny clips: checks that it runs

Every variant is a whole process, timed from start to exit (imports, Ray start-up, model
build, any compilation included), on the same videos (the real samples in ../shared/data,
repeated to reach --clips; synthetic ones when absent), same random S3D weights, same clips:

- loop: decode one video, run eager S3D on its clips, next video (single-process extractors).
- pipeline: `jobs/extract.py` (Ray Data: decode fused into the S3D actor, two calls in flight,
  S3D execution "auto"), with the compile cache "cold" (empty: auto does not compile a small
  job) and/or "warm" (the compiled package built beforehand, untimed, as a previous run would).
- model-only: the S3D time alone for the same clips in the mode the pipeline used (decoded
  beforehand, untimed): the bound a pipeline that hides decoding and I/O can reach.

Prints videos/s, clips/s, the pipeline/loop ratio and the pipeline/model-only ratio, and checks
that the pipeline's features equal the loop's (relative 1e-3). Writes OUT/extraction.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    REPO,
    SHARED_VIDEOS,
    base_parser,
    median,
    print_table,
    run_process,
    write_result,
)


def prepare_videos(directory: Path, clips: int, clip_len: int, synthetic: bool) -> dict:
    """Links to the sample videos (repeated) or synthetic videos, an MSR-VTT annotation file
    for them, and the clip count: {"videos", "annotations", "num_videos", "num_clips"}."""
    from pipeline.ingest.decode import probe_video
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    shutil.rmtree(directory, ignore_errors=True)
    videos = directory / "videos"
    videos.mkdir(parents=True)
    if synthetic or not SHARED_VIDEOS.is_dir():  # two clips per video, 320x240 at 30 fps
        config = SyntheticConfig(
            num_videos=math.ceil(clips / 2),
            duration=2 * clip_len / 15,
            fps=30,
            width=320,
            height=240,
            audio=False,
        )
        info = generate_synthetic_dataset(directory / "synthetic", config)
        sources = sorted(Path(info["videos"]).glob("*.mp4"))
    else:  # links, never copies: the real files stay in ../shared/data
        sources = sorted(path for path in SHARED_VIDEOS.iterdir() if path.is_file())
    entries, total, index = [], 0, 0
    while total < clips:
        source = sources[index % len(sources)]
        info = probe_video(str(source))
        video_id = f"video{index}"
        (videos / f"{video_id}{source.suffix}").symlink_to(source.resolve())
        total += max(1, math.ceil(info.duration * 15 / clip_len - 1e-9))
        entries.append(
            {
                "video_id": video_id,
                "category": index % 20,
                "split": "train",
                "url": "",
                "id": index,
                "start time": 0.0,
                "end time": info.duration,
            }
        )
        index += 1
    sentences = [
        {"video_id": e["video_id"], "caption": "a video", "sen_id": i}
        for i, e in enumerate(entries)
    ]
    annotations = directory / "videodatainfo.json"
    annotations.write_text(json.dumps({"videos": entries, "sentences": sentences}))
    return {"videos": str(videos), "annotations": str(annotations), "num_videos": len(entries)}


def video_paths(videos: str) -> list[tuple[str, str]]:
    paths = sorted(Path(videos).iterdir(), key=lambda path: int(path.stem[len("video") :]))
    return [(path.stem, str(path)) for path in paths]


def s3d_config(clip_len: int):
    from feature_extractors.s3d import S3DConfig

    return S3DConfig(weights="random", clip_len=clip_len, clip_stride=clip_len)


def run_loop(args) -> dict:
    """The sequential baseline: decode one video, run eager S3D on its clips, next video."""
    import numpy as np

    from feature_extractors.s3d import S3DExtractor
    from pipeline.ingest.decode import iter_clips

    config = s3d_config(args.clip_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = S3DExtractor(config, execution="eager")
    features, clips = {}, 0
    for video_id, path in video_paths(args.videos):
        frames = [clip for _, _, _, clip in iter_clips(path, config)]
        rows = [
            extractor(np.stack(frames[start : start + args.batch]))
            for start in range(0, len(frames), args.batch)
        ]
        features[video_id] = np.concatenate(rows)
        clips += len(frames)
    np.savez(args.features, **features)
    return {"clips": clips, "execution": "eager"}


def run_model_only(args) -> dict:
    """S3D alone: decode every clip first (untimed), then time the model in the mode "auto"
    resolves to for this job, exactly as the pipeline's actor would."""
    import numpy as np
    import torch

    from feature_extractors.s3d import S3DExtractor
    from pipeline.ingest.decode import iter_clips

    config = s3d_config(args.clip_len)
    started = time.perf_counter()
    clips = [
        clip for _, path in video_paths(args.videos) for _, _, _, clip in iter_clips(path, config)
    ]
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = S3DExtractor(config, execution=args.execution, expected_clips=len(clips))
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(clips), args.batch):
        extractor(np.stack(clips[start : start + args.batch]))
    forward_seconds = time.perf_counter() - started
    return {
        "clips": len(clips),
        "execution": extractor.execution,
        "decode_seconds": decode_seconds,
        "build_seconds": build_seconds,
        "forward_seconds": forward_seconds,
    }


def build_package(args) -> dict:
    """Build (or find) the compiled S3D package in the cache, as an earlier run would have."""
    import torch

    from feature_extractors.s3d import S3DExtractor

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # what the pipeline's actor uses
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        S3DExtractor(s3d_config(args.clip_len), execution="compile")
    return {"seconds": time.perf_counter() - started}


def child(variant: str, data: dict, args, cache: Path, features: Path | None = None) -> dict:
    """One whole process of a variant; returns its timing and what it reported."""
    env = {"CRIF_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    if variant == "pipeline":
        store = Path(args.out) / "extraction-store"
        shutil.rmtree(store, ignore_errors=True)
        command = [
            sys.executable,
            str(REPO / "jobs" / "extract.py"),
            "--videos",
            data["videos"],
            "--annotations",
            data["annotations"],
            "--out",
            str(store),
            "--modalities",
            "visual",
            "--s3d-weights",
            "random",
            "--clip-len",
            str(args.clip_len),
            "--clip-stride",
            str(args.clip_len),
            "--clip-batch-size",
            str(args.batch),
            "--s3d-execution",
            args.execution,
        ]
        result = run_process(command, env={**env, "RAY_ADDRESS": ""})
        output = result["output"]  # jobs/extract.py prints its summary as indented JSON
        summary = json.loads(output[output.rindex("\n{") :].split("\n}")[0] + "}")
        visual = summary["modalities"]["visual"]
        return {
            "seconds": result["seconds"],
            "job_seconds": visual["seconds"],
            "clips": visual["clips"],
            "store": str(store),
        }
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--videos",
        data["videos"],
        "--clip-len",
        str(args.clip_len),
        "--batch",
        str(args.batch),
        "--execution",
        args.execution,
        "--features",
        str(features or ""),
    ]
    result = run_process(command, env=env)
    report = json.loads(result["output"].strip().splitlines()[-1])
    if variant == "model":  # the whole process less its (untimed) decoding
        report["process_seconds_without_decode"] = result["seconds"] - report["decode_seconds"]
    return {"seconds": result["seconds"], **report}


def compare_features(store: str, loop_features: Path) -> float:
    """Largest |pipeline - loop| / max|loop| over every video's clips."""
    import numpy as np

    from pipeline import store as feature_store

    loop = np.load(loop_features)
    worst = 0.0
    for row in feature_store.read_store(store, columns=["video_id", "visual"]).to_pylist():
        pipeline = feature_store.sequence_to_numpy(row["visual"], 1024)
        reference = loop[row["video_id"]]
        worst = max(worst, float(np.abs(pipeline - reference).max() / np.abs(reference).max()))
    return worst


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=60, help="job size, in clips")
    parser.add_argument("--clip-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="clips per S3D call")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    parser.add_argument("--cache", choices=["cold", "warm", "both"], default="both")
    parser.add_argument("--execution", default="auto", help="the pipeline's S3D execution")
    parser.add_argument("--synthetic", action="store_true", help="synthetic videos, not samples")
    parser.add_argument("--variant", choices=["loop", "model", "build"], help=argparse_hidden())
    parser.add_argument("--videos", help=argparse_hidden())
    parser.add_argument("--features", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.variant:  # a child process: run one variant, print its JSON report last
        run = {"loop": run_loop, "model": run_model_only, "build": build_package}[args.variant]
        print(json.dumps(run(args)))
        return {}
    if args.smoke:
        args.clips, args.clip_len, args.cache, args.synthetic = 2, 16, "cold", True

    out = Path(args.out)
    data = prepare_videos(out / "extraction-data", args.clips, args.clip_len, args.synthetic)
    caches = {"cold": out / "extraction-cache-cold", "warm": out / "extraction-cache-warm"}
    states = ["cold", "warm"] if args.cache == "both" else [args.cache]
    if "warm" in states:  # as a previous run (or benchmarks/s3d_cpu.py) leaves it
        built = child("build", data, args, caches["warm"])
        print(f"compiled package ready in {built['seconds']:.0f} s (untimed, cached)")
    loop_features = out / "extraction-loop-features.npz"
    runs: dict[str, list[dict]] = {}
    order = ["loop"] + [f"{kind}_{state}" for state in states for kind in ("pipeline", "model")]
    for repeat in range(args.repeats):
        shift = repeat % len(order)
        for name in order[shift:] + order[:shift]:
            state = name.split("_")[-1]
            if name == "loop":
                result = child("loop", data, args, caches["cold"], loop_features)
            elif name.startswith("pipeline"):
                shutil.rmtree(caches["cold"], ignore_errors=True)  # cold means cold every time
                result = child("pipeline", data, args, caches[state])
                result["max_relative_difference"] = compare_features(result["store"], loop_features)
            else:
                shutil.rmtree(caches["cold"], ignore_errors=True)
                result = child("model", data, args, caches[state])
            runs.setdefault(name, []).append(result)
            print(f"  {name}: {result['seconds']:.1f} s", flush=True)

    clips, videos = runs["loop"][0]["clips"], data["num_videos"]
    loop_seconds = median([run["seconds"] for run in runs["loop"]])
    rows = [
        {
            "variant": "loop",
            "execution": "eager",
            "process_s": loop_seconds,
            "videos_per_s": videos / loop_seconds,
            "clips_per_s": clips / loop_seconds,
            "vs_loop": 1.0,
        }
    ]
    checks = {}
    for state in states:
        pipeline, model = runs[f"pipeline_{state}"], runs[f"model_{state}"]
        seconds = median([run["seconds"] for run in pipeline])
        job = median([run["job_seconds"] for run in pipeline])
        forward = median([run["forward_seconds"] for run in model])
        model_process = median([run["process_seconds_without_decode"] for run in model])
        execution = model[0]["execution"]
        difference = max(run["max_relative_difference"] for run in pipeline)
        rows.append(
            {
                "variant": f"pipeline ({state} cache)",
                "execution": execution,
                "process_s": seconds,
                "job_s": job,
                "videos_per_s": videos / seconds,
                "clips_per_s": clips / seconds,
                "vs_loop": loop_seconds / seconds,
                "vs_model_only": seconds / model_process,
                "max_rel_diff": difference,
            }
        )
        rows.append(
            {
                "variant": f"model-only ({state} cache)",
                "execution": execution,
                "process_s": model_process,
                "job_s": forward,
                "clips_per_s": clips / forward,
                "vs_loop": loop_seconds / model_process,
            }
        )
        checks[state] = {
            "pipeline_vs_loop": loop_seconds / seconds,
            "goal_1_5x_loop": loop_seconds / seconds >= 1.5,
            "pipeline_process_vs_model_only_process": seconds / model_process,
            "pipeline_job_vs_model_forward": job / forward,
            "goal_within_10pct_of_model_only": seconds / model_process <= 1.10,
            "features_equal_1e-3": difference <= 1e-3,
        }
    print_table(
        f"Extraction, {videos} videos, {clips} clips of {args.clip_len}x224x224, "
        f"{os.cpu_count()} cores (whole processes; job_s: Ray Data job / S3D forward alone)",
        rows,
        [
            "variant",
            "execution",
            "process_s",
            "job_s",
            "videos_per_s",
            "clips_per_s",
            "vs_loop",
            "vs_model_only",
            "max_rel_diff",
        ],
    )
    for state, check in checks.items():
        print(
            f"{state}: "
            + ", ".join(
                f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                for key, value in check.items()
            )
        )
    result = {
        "videos": videos,
        "clips": clips,
        "clip_len": args.clip_len,
        "batch": args.batch,
        "source": "synthetic" if args.synthetic or not SHARED_VIDEOS.is_dir() else "samples",
        "rows": rows,
        "checks": checks,
        "runs": runs,
    }
    write_result(args.out, "extraction", result)
    return result


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
