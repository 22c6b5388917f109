"""Train CRIF on a feature store with Ray Train; writes RUN_DIR/{model/, metrics.json, ...}.

Run locally (starts a new local Ray unless RAY_ADDRESS or --address is given):

    python jobs/train.py --features outputs/features --out outputs/run \
        --semantic text --backbone gru --ablation full --epochs 12 --num-workers 2

On a cluster (the driver joins the cluster through RAY_ADDRESS):

    ray job submit --working-dir . -- python jobs/train.py \
        --features /mnt/shared/features --out /mnt/shared/runs/crif --num-workers 4 --use-gpu

Re-running with the same --out resumes from the last checkpoint. --num-workers 0 runs the
training loop in this process (Ray Train local mode). Every flag is a TrainConfig field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.train.trainer import TrainConfig, run_training  # noqa: E402

CHOICES = {
    "semantic": ("text", "audio"),
    "backbone": ("gru", "vilt"),
    "ablation": ("baseline", "align", "inference", "fusion", "full"),
    "align_fn": ("coral", "l2", "kl", "ssan"),
    "align_target": ("clip", "whole"),
    "fusion": ("concat", "plus", "mult", "max", "min"),
    "strategy": ("end2end", "multistage"),
    "fail_kind": ("raise", "kill"),
}


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field: --alpha-sim for alpha_sim, --use-gpu for use_gpu."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        required = field.default is dataclasses.MISSING
        if kind is bool:
            parser.add_argument(flag, action="store_true")
            continue
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        default = None if required else field.default
        parser.add_argument(
            flag, type=kind, default=default, required=required, choices=CHOICES.get(field.name)
        )
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    init_ray(config.address)
    summary = run_training(config)
    splits = summary["metrics"]["splits"]
    for split, metrics in splits.items():
        print(split, " ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    print(f"model: {summary['model']}")
    print(f"metrics: {summary['metrics_path']}")


if __name__ == "__main__":
    main()
