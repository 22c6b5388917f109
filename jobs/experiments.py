r"""Reproduce the paper's tables on your features: ablation, alignment or backbone grids.

    python jobs/experiments.py --features outputs/features --out outputs/exp --grid ablation
    python jobs/experiments.py --quick --out outputs/exp --grid all   # synthetic benchmark
    python jobs/experiments.py --features F --out O --grid backbones --seeds 5 --set epochs=8
    ray job submit --working-dir . -- python jobs/experiments.py \
        --features /mnt/shared/features --out /mnt/shared/exp --grid ablation --set num_workers=1

--grid ablation: Baseline, +Align, +Inference, +Fusion (Tables III/IV); alignment: {Align,
Clip} x {L2-Norm, KL-D, DeepCoral, SSAN} with the Visual, Semantic, Inference and fused columns
(Table V); backbones: GRU and ViLT (Table II); all: the three, sharing identical cells. Every
cell x seed is a Tune trial; --quick trains small models on the synthetic cross-camera
benchmark (OUT/benchmark). Re-running resumes. Outputs in OUT/GRID/: <grid>.md (mean ± std),
<grid>_tsne.png (Fig. 3/4), results.csv (every number), runs/RUN/seed-S/ (run directories).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.common import cli
from pipeline.tune.grids import ExperimentConfig, run_experiments
from pipeline.tune.sweep import parse_param


def build_parser() -> argparse.ArgumentParser:
    parser = cli.config_parser(ExperimentConfig, __doc__)
    parser.add_argument("--set", action="append", help="FIELD=VALUE of every cell, repeatable")
    return parser


def make_config(values: dict, args: argparse.Namespace) -> ExperimentConfig:
    train = {**values.pop("train", {}), **dict(map(parse_param, args.set or []))}
    return ExperimentConfig(train=train, **values)


def experiments(config: ExperimentConfig, args: argparse.Namespace) -> str:
    summary = run_experiments(config)
    for table in summary["tables"].values():
        print(Path(table).read_text())
    return json.dumps({k: summary[k] for k in ("tables", "tsne", "results", "failed")}, indent=2)


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(experiments, build_parser(), ExperimentConfig, argv, build=make_config)


if __name__ == "__main__":
    sys.exit(main())
