r"""Train CRIF on a feature store with Ray Train; writes RUN_DIR/{model/, metrics.json, ...}.

Run locally (starts a new local Ray unless RAY_ADDRESS or --address is given):

    python jobs/train.py --features outputs/features --out outputs/run \
        --semantic text --backbone gru --ablation full --epochs 12 --num-workers 2
    python jobs/train.py --config configs/train-msrvtt-paper.yaml --features F --out O

On a cluster (the driver joins the cluster through RAY_ADDRESS):

    ray job submit --working-dir . -- python jobs/train.py \
        --features /mnt/shared/features --out /mnt/shared/runs/crif --num-workers 4 --use-gpu

Re-running with the same --out resumes from the last checkpoint. --num-workers 0 runs the
training loop in this process (Ray Train local mode). Every flag is a TrainConfig field.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.common import cli
from pipeline.train.trainer import TrainConfig, run_training


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field: --alpha-sim for alpha_sim, --use-gpu for use_gpu."""
    return cli.config_parser(TrainConfig, __doc__)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return cli.parse_config(build_parser(), TrainConfig, argv)[0]


def train(config: TrainConfig, args: argparse.Namespace) -> str:
    summary = run_training(config)
    for split, metrics in summary["metrics"]["splits"].items():
        print(split, " ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return f"model: {summary['model']}\nmetrics: {summary['metrics_path']}"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(train, build_parser(), TrainConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
