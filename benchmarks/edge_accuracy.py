"""Accuracy of a trained CRIF model exported to ONNX: PyTorch vs ONNX Runtime fp32 vs int8, on
the seen and unseen cameras of the synthetic videos and under the robustness job's shifts.

    python benchmarks/edge_accuracy.py --out outputs/edge_accuracy
    python benchmarks/edge_accuracy.py --shifts underexposure,blur,noise --severity 2
    python benchmarks/edge_accuracy.py --smoke        # 24 videos, 2 shifts: checks it runs

Stages (each skipped when its output is already there, so a rerun resumes):
1. a synthetic MSR-VTT-format dataset (pipeline/synthetic/videos.py): train and val videos
   from the training cameras, test videos from cameras never seen in training;
2. S3D (random weights) + text features, the extraction job (Ray Data);
3. CRIF (``full``, captions privileged) trained end to end in local mode;
4. export fp32 + int8 (calibrated on the training videos), jobs/export.py's function;
5. PyTorch: jobs/score.py's pipeline on the val (seen) and test (unseen) videos, and
   jobs/robustness.py's on the test videos under each shift;
6. ONNX Runtime fp32 and int8: the edge runner (jobs/edge_score.py's function) on the clean
   videos; under a shift, the edge decoder's clips with the same shift code applied where the
   robustness job applies it (after the S3D resize, before the centre crop, seeded per video
   id and clip), then the same backbone and head graphs.

S3D has random weights (no download), so absolute accuracies say little about a real model;
what the table shows is whether int8 changes the trained head's predictions relative to fp32.
Writes OUT/edge_accuracy.json; the stages' outputs go under
OUT/edge_accuracy-<videos>v<classes>c/.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import base_parser, print_table, write_result  # noqa: E402

DEFAULT_SHIFTS = "underexposure,contrast,blur,noise"
TRAIN = {  # end to end (eq. 22): explicit, the default is the 3-stage schedule
    "ablation": "full",
    "strategy": "end2end",
    "epochs": 16,
    "batch_size": 16,
    "hidden_dim": 128,
    "shared_dim": 128,
    "rho": 64,
    "lr": 1e-2,
    "lr_step": 8,
    "num_workers": 0,
}


def _stage(started: float, line: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)


def _dataset(out: Path, args) -> dict:
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    config = SyntheticConfig(
        num_videos=args.videos,
        num_classes=args.classes,
        duration=2.0,
        val_fraction=0.2,
        test_fraction=0.3,
        seed=0,
    )
    info_file = out / "data" / "info.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    info = generate_synthetic_dataset(out / "data", config)
    info = {**json.loads(json.dumps(info, default=str)), "config": dataclasses.asdict(config)}
    info_file.write_text(json.dumps(info, indent=2))
    return info


def _splits(info: dict) -> dict[str, list[tuple[str, str, int]]]:
    """split -> [(video_id, path, label)] from the annotations."""
    from pipeline.ingest.manifest import read_msrvtt

    manifest = read_msrvtt(info["annotations"], str(info["videos"]))
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for row in manifest.rows:
        splits[row.split].append((row.video_id, row.path, row.label))
    return splits


def _torch_scores(out: Path, run: Path, rows: list, started: float) -> dict[str, int]:
    """video_id -> top-1 index from jobs/score.py's pipeline (PyTorch S3D + CRIF, Ray Data)."""
    import pyarrow.parquet as pq

    from pipeline.score.batch import ScoreConfig, score_videos

    listing = out / "clean_videos.txt"
    listing.write_text("".join(f"{path}\n" for _, path, _ in rows))
    predictions = out / "torch_predictions"
    if not _complete(predictions, rows):
        _stage(started, f"PyTorch scoring of {len(rows)} videos (jobs/score.py)")
        score_videos(ScoreConfig(model=str(run), videos=str(listing), out=str(predictions)))
    table = pq.read_table(predictions / "predictions.parquet").to_pylist()
    return {row["video_id"]: row["top_k_indices"][0] for row in table if row["status"] == "ok"}


def _complete(predictions: Path, rows: list) -> bool:
    """Whether OUT/predictions.parquet has a row for every video (a rerun reuses it)."""
    import pyarrow.parquet as pq

    path = predictions / "predictions.parquet"
    if not path.exists():
        return False
    scored = set(pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist())
    return {video_id for video_id, _, _ in rows} <= scored


def _torch_robustness(out: Path, run: Path, store: Path, shifts, severity: int) -> dict:
    """shift -> PyTorch Acc-1 on the test videos (jobs/robustness.py's pipeline)."""
    from pipeline.score.robustness import RobustnessConfig, run_robustness

    config = RobustnessConfig(
        models=(str(run),),
        videos=str(store),
        out=str(out / "robustness"),
        shifts=tuple(shifts),
        severities=(severity,),
    )
    run_robustness(config)
    document = json.loads((out / "robustness" / "robustness.json").read_text())
    return {result["shift"]: result["acc1"] for result in document["results"]}


def _edge_clean(export: Path, rows: list, precision: str, out: Path) -> dict[str, int]:
    """video_id -> top-1 index from the edge runner (jobs/edge_score.py's function)."""
    import pyarrow.parquet as pq

    from pipeline.edge.runtime import EdgeScoreConfig, score_videos

    listing = out / "clean_videos.txt"
    predictions = out / f"edge_{precision}"
    if not _complete(predictions, rows):
        score_videos(
            EdgeScoreConfig(
                model=str(export), videos=str(listing), out=str(predictions), precision=precision
            )
        )
    table = pq.read_table(predictions / "predictions.parquet").to_pylist()
    return {row["video_id"]: row["top_k_indices"][0] for row in table if row["status"] == "ok"}


def _edge_shifted(export: Path, rows: list, shifts, severity: int, seed: int = 0) -> dict:
    """(precision, shift) -> {video_id: top-1}, both precisions on the same shifted clips.

    The edge decoder resizes without the crop; the shift then sees the frames the robustness
    job's decode stage gives it (the S3D resize), and the centre crop follows.
    """
    import numpy as np

    from pipeline.edge.decode import iter_clips
    from pipeline.edge.runtime import EdgeModel
    from pipeline.score.shifts import shift_clip

    models = {precision: EdgeModel.load(export, precision) for precision in ("fp32", "int8")}
    preprocessing = models["fp32"].preprocessing
    uncropped = dataclasses.replace(preprocessing, crop=min(preprocessing.resize))
    height, width = preprocessing.resize
    top = int(round((height - preprocessing.crop) / 2.0))
    left = int(round((width - preprocessing.crop) / 2.0))
    window = (slice(top, top + preprocessing.crop), slice(left, left + preprocessing.crop))
    predictions: dict[tuple[str, str], dict[str, int]] = {}
    for count, (video_id, path, _) in enumerate(rows, 1):
        print(f"shifted clips: {video_id} ({count}/{len(rows)})", flush=True)
        clips = [clip for _, clip in iter_clips(path, uncropped)]
        for name in shifts:
            shift = {"name": name, "severity": severity, "seed": seed}
            shifted = np.stack(
                [
                    shift_clip(clip, shift, video_id, number)[:, window[0], window[1]]
                    for number, clip in enumerate(clips)
                ]
            )
            for precision, model in models.items():
                probabilities = model.probabilities(model.features(shifted))
                top1 = int(np.argmax(probabilities))
                predictions.setdefault((precision, name), {})[video_id] = top1
    return predictions


def _accuracy(predictions: dict[str, int], rows: list) -> float:
    return sum(predictions.get(video_id) == label for video_id, _, label in rows) / len(rows)


def _agreement(first: dict[str, int], second: dict[str, int], rows: list) -> str:
    same = sum(
        first.get(video_id) is not None and first.get(video_id) == second.get(video_id)
        for video_id, _, _ in rows
    )
    return f"{same}/{len(rows)}"


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--videos", type=int, default=80, help="synthetic videos generated")
    parser.add_argument("--classes", type=int, default=5, help="classes of the dataset")
    parser.add_argument("--shifts", default=DEFAULT_SHIFTS, help="comma list of shifts")
    parser.add_argument("--severity", type=int, default=2, help="severity of every shift")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    args = parser.parse_args()
    if args.smoke:
        args.videos, args.shifts = 24, "underexposure,noise"
    shifts = args.shifts.split(",")
    # one directory per dataset size: the stages resume from what is there
    out = Path(args.out) / f"edge_accuracy-{args.videos}v{args.classes}c"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.common.ray_utils import init_ray

    init_ray("local", num_cpus=args.threads, include_dashboard=False)

    _stage(started, f"1/6 synthetic dataset: {args.videos} videos, {args.classes} classes")
    info = _dataset(out, args)
    splits = _splits(info)
    print({split: len(rows) for split, rows in splits.items()})

    store = out / "features"
    if not (store / "dataset.json").exists():
        _stage(started, "2/6 features: S3D random weights (16-frame clips) + text, Ray Data")
        from pipeline.extract.job import ExtractConfig, extract_features

        extract_features(
            ExtractConfig(
                videos=str(info["videos"]),
                annotations=tuple(info["annotations"]),
                out=str(store),
                s3d_weights="random",
                clip_len=16,
                clip_stride=16,
                model_threads=args.threads,
            )
        )

    run = out / "run"
    if not (run / "metrics.json").exists():
        _stage(started, f"3/6 training CRIF: {TRAIN}")
        from pipeline.train.trainer import TrainConfig, run_training

        run_training(TrainConfig.from_flat(features=str(store), out=str(run), **TRAIN))
    metrics = json.loads((run / "metrics.json").read_text())

    export = out / "edge"
    if not (export / "model.json").exists():
        _stage(started, "4/6 export fp32 + int8 (calibration: the training videos)")
        from pipeline.edge.export import ExportConfig, export_model

        export_model(
            ExportConfig(model=str(run), out=str(export), int8=True, calibration=str(store))
        )
    document = json.loads((export / "model.json").read_text())

    fitted, seen, unseen = splits["train"], splits["val"], splits["test"]
    clean_rows = fitted + seen + unseen
    _stage(started, "5/6 PyTorch: jobs/score.py clean, jobs/robustness.py shifted")
    torch_clean = _torch_scores(out, run, clean_rows, started)
    torch_shifted = _torch_robustness(out, run, store, shifts, args.severity)

    _stage(started, "6/6 ONNX Runtime fp32 and int8: clean (edge runner), shifted")
    edge_clean = {p: _edge_clean(export, clean_rows, p, out) for p in ("fp32", "int8")}
    edge_shifted = _edge_shifted(export, unseen, shifts, args.severity)

    rows = []
    columns = [
        "precision",
        "train Acc-1",
        "seen Acc-1",
        "unseen Acc-1",
        *(f"{s} Acc-1" for s in shifts),
    ]
    for precision in ("torch", "fp32", "int8"):
        clean = torch_clean if precision == "torch" else edge_clean[precision]
        row = {
            "precision": {"torch": "PyTorch", "fp32": "ORT fp32", "int8": "ORT int8"}[precision],
            "train Acc-1": _accuracy(clean, fitted),
            "seen Acc-1": _accuracy(clean, seen),
            "unseen Acc-1": _accuracy(clean, unseen),
        }
        for name in shifts:
            row[f"{name} Acc-1"] = (
                torch_shifted[name]
                if precision == "torch"
                else _accuracy(edge_shifted[(precision, name)], unseen)
            )
        rows.append(row)
    agreement = {
        "int8 vs fp32 train": _agreement(edge_clean["int8"], edge_clean["fp32"], fitted),
        "int8 vs fp32 seen": _agreement(edge_clean["int8"], edge_clean["fp32"], seen),
        "int8 vs fp32 unseen": _agreement(edge_clean["int8"], edge_clean["fp32"], unseen),
        "fp32 vs torch train": _agreement(edge_clean["fp32"], torch_clean, fitted),
        "fp32 vs torch seen": _agreement(edge_clean["fp32"], torch_clean, seen),
        "fp32 vs torch unseen": _agreement(edge_clean["fp32"], torch_clean, unseen),
        **{
            f"int8 vs fp32 {name}": _agreement(
                edge_shifted[("int8", name)], edge_shifted[("fp32", name)], unseen
            )
            for name in shifts
        },
    }
    sizes = {
        name: round((export / name).stat().st_size / 1e6, 2)
        for name in ("model.onnx", "backbone.onnx", "backbone.int8.onnx", "head.onnx")
    }
    print_table(
        f"Acc-1 ({len(fitted)} train videos (fitted), {len(seen)} seen-camera val videos, "
        f"{len(unseen)} unseen-camera test videos, "
        f"shifts at severity {args.severity} on the test videos; random S3D weights)",
        rows,
        columns,
    )
    print("\ntop-1 agreement:", json.dumps(agreement, indent=2))
    print("sizes (MB):", sizes)
    write_result(
        args.out,
        "edge_accuracy",
        {
            "splits": {split: len(items) for split, items in splits.items()},
            "train": TRAIN,
            "training_metrics": metrics.get("splits"),
            "shifts": shifts,
            "severity": args.severity,
            "accuracy": rows,
            "agreement": agreement,
            "sizes_mb": sizes,
            "export_parity": document.get("parity"),
            "stages": str(out),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
