"""Edge inference of the visual path: per-clip latency, clips/s and real-time factor at batch 1
for PyTorch (eager, channels-last, compiled) and ONNX Runtime (fp32, int8), plus sizes and
how far int8 moves the features and top-1 (clean and camera-shifted clips).

    python benchmarks/edge.py                      # 64x224x224 clips, a random-weight model
    python benchmarks/edge.py --repeats 5 --no-compile
    python benchmarks/edge.py --smoke              # 16-frame clips, 1 repeat: checks it runs

One clip = S3D + the CRIF head over that one clip, from uint8 frames. Real-time factor:
seconds of video one clip covers (clip_len / fps, clips back to back) per second of compute.
Variants run interleaved in one process (benchmarks.common.interleaved) with the same thread
count (--threads, default every usable core). The int8 backbone is calibrated on clips of the
shared sample videos. Writes OUT/edge.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    SHARED_VIDEOS,
    base_parser,
    interleaved,
    median,
    print_table,
    write_result,
)


def _model_dir(root: Path, clip_len: int) -> Path:
    """A CRIF model (random weights, 5 classes) on the random-S3D set-up of this clip length."""
    import torch

    from feature_extractors import build_extractor
    from pipeline.artifact import write_checkpoint
    from pipeline.crif.model import CRIFConfig, build_model

    extractor = build_extractor(
        "s3d", {"weights": "random", "clip_len": clip_len, "clip_stride": clip_len}
    )
    config = CRIFConfig(num_classes=5, semantic_dim=8)
    torch.manual_seed(0)
    model = build_model(config)
    info = {
        "format": "crif-checkpoint/1",
        "model_config": config.to_dict(),
        "task": "single_label",
        "class_names": [f"class_{index}" for index in range(5)],
        "modalities": {"visual": extractor.describe()},
    }
    write_checkpoint(root / "run" / "model", model.state_dict(), info)
    return root / "run"


def _sizes() -> dict:
    """Installed size (MB) of the edge runtime set vs the whole environment's site-packages."""
    import numpy
    import onnxruntime

    site = Path(numpy.__file__).resolve().parents[1]

    def size(names) -> float:
        total = 0
        for name in names:
            for path in site.glob(name):
                files = [path] if path.is_file() else path.rglob("*")
                total += sum(p.stat().st_size for p in files if p.is_file())
        return round(total / 1e6, 1)

    runtime = ["onnxruntime", "onnxruntime-*", "numpy", "numpy-*", "numpy.libs", "av", "av-*",
               "av.libs", "pyarrow", "pyarrow-*"]  # fmt: skip
    return {
        "runtime_set_mb": size(runtime),
        "runtime_without_pyarrow_mb": size([n for n in runtime if "pyarrow" not in n]),
        "site_packages_mb": size(["*"]),
        "torch_mb": size(["torch", "torch-*", "nvidia", "triton"]),
        "onnxruntime": onnxruntime.__version__,
    }


def _agreement(out: Path, clips, preprocessing) -> dict:
    """int8 vs fp32 on real clips, clean and under camera shifts: feature cosine, top-1."""
    import numpy as np

    from pipeline.edge.runtime import EdgeModel
    from pipeline.score.shifts import shift_clip

    fp32, int8 = EdgeModel.load(out), EdgeModel.load(out, "int8")
    shifts = [None, *({"name": n, "severity": 2, "seed": 0} for n in
              ("underexposure", "contrast", "color_temperature", "blur", "noise"))]  # fmt: skip
    rows = []
    for shift in shifts:
        cosines, same = [], []
        for number, clip in enumerate(clips):
            if shift is not None:
                clip = shift_clip(clip, shift, "benchmark", number)
            a, b = fp32.features(clip[None]), int8.features(clip[None])
            cosines.append(float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)))
            same.append(int(np.argmax(fp32.probabilities(a)) == np.argmax(int8.probabilities(b))))
        rows.append(
            {
                "shift": shift["name"] if shift else "none",
                "clips": len(clips),
                "feature_cosine_min": f"{min(cosines):.5f}",
                "top1_agreement": float(np.mean(same)),
            }
        )
    return {"rows": rows}


def main(argv=None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch compile (AOTI)")
    parser.add_argument("--calibration-clips", type=int, default=8, help="int8 calibration clips")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    from feature_extractors import config_from_dict
    from feature_extractors.s3d import S3DExtractor
    from pipeline.edge.export import ExportConfig, export_model
    from pipeline.edge.metadata import BACKBONE_FILE, INT8_FILE, Preprocessing
    from pipeline.edge.runtime import EdgeModel

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    clip_len = 16 if args.smoke else 64
    repeats = 1 if args.smoke else args.repeats
    root = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    run = _model_dir(root, clip_len)
    started = time.perf_counter()
    export = export_model(ExportConfig(model=str(run), out=str(root / "edge"), int8=True,
                                       calibration=str(SHARED_VIDEOS),
                                       calibration_clips=args.calibration_clips))  # fmt: skip
    export_seconds = time.perf_counter() - started
    from pipeline.artifact import load_model

    model, info = load_model(run)
    config = info["modalities"]["visual"]["config"]
    preprocessing = Preprocessing.from_dict(config)
    clip = np.random.default_rng(0).integers(0, 256, (1, clip_len, 224, 224, 3), dtype=np.uint8)
    mask = torch.ones(1, 1, dtype=torch.bool)

    def torch_variant(extractor):
        def call():
            features = torch.from_numpy(extractor(clip))[None]
            with torch.inference_mode():
                model.predict(features, mask).softmax(-1)

        return call

    variants, startup = {}, {}
    for mode in ("eager", "channels_last", "compile"):
        if mode == "compile" and args.no_compile or mode == "compile" and args.smoke:
            continue
        began = time.perf_counter()
        try:
            s3d_config = config_from_dict(S3DExtractor, config)
            extractor = S3DExtractor(s3d_config, execution=mode, cache_dir=root / "aoti")
        except Exception as error:  # no compiler, export failure: recorded, not fatal
            startup[f"torch {mode}"] = f"failed: {type(error).__name__}: {error}"[:300]
            continue
        startup[f"torch {mode}"] = round(time.perf_counter() - began, 1)
        variants[f"torch {mode}"] = torch_variant(extractor)
    for precision in ("fp32", "int8"):
        edge = EdgeModel.load(root / "edge", precision, threads)

        def call(edge=edge) -> None:  # None: interleaved times the whole call
            edge.classify_clips(clip)

        variants[f"onnxruntime {precision}"] = call
    for call in variants.values():
        call()  # warm-up
    times = interleaved(variants, repeats)
    seconds_per_clip = clip_len / preprocessing.fps
    rows = []
    for name, values in times.items():
        p50 = median(values)
        rows.append({"variant": name, "p50_s": p50, "p95_s": float(np.percentile(values, 95)),
                     "clips_per_s": 1 / p50, "realtime_factor": seconds_per_clip / p50,
                     "startup_s": startup.get(name)})  # fmt: skip
    print_table(f"one {clip_len}x224x224 clip, batch 1, {threads} threads, {repeats} repeats",
                rows, ["variant", "p50_s", "p95_s", "clips_per_s", "realtime_factor",
                       "startup_s"])  # fmt: skip
    sizes = {
        "backbone_fp32_mb": round((root / "edge" / BACKBONE_FILE).stat().st_size / 1e6, 1),
        "backbone_int8_mb": round((root / "edge" / INT8_FILE).stat().st_size / 1e6, 1),
        **_sizes(),
    }
    print_table("sizes (MB)", [sizes], list(sizes))
    from pipeline.edge.decode import iter_clips

    clips = []
    for path in sorted(SHARED_VIDEOS.iterdir()):
        clips += [c for _, c in iter_clips(str(path), preprocessing)][:2]
    agreement = _agreement(root / "edge", clips, preprocessing)
    print_table("int8 vs fp32 (random-weight model)", agreement["rows"],
                ["shift", "clips", "feature_cosine_min", "top1_agreement"])  # fmt: skip
    write_result(args.out, "edge", {
        "clip_len": clip_len, "threads": threads, "repeats": repeats, "latency": rows,
        "startup": startup, "sizes": sizes, "int8_agreement": agreement,
        "export_seconds": round(export_seconds, 1), "export": export,
        "preprocessing": asdict(preprocessing),
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
