r"""Search the CRIF loss weights and learning rate with Ray Tune (ASHA early stopping).

    python jobs/tune.py --features outputs/features --out outputs/tune --num-samples 16
    python jobs/tune.py --features F --out O --num-samples 8 --param lr=loguniform:1e-4:1e-2 \
        --param beta=choice:0.5,1.0 --param gamma=0.5 --set epochs=6 --set val_fraction=0.1
    python jobs/tune.py --features F --out O --space sweep.yaml   # {space: {...}, train: {...}}
    ray job submit --working-dir . -- python jobs/tune.py --features /mnt/shared/features \
        --out /mnt/shared/tune --num-samples 32 --set num_workers=2

Default space (the paper's video setting): alpha_sim, alpha_align uniform in [0.1, 2.0]; beta,
gamma in {0.1, 0.2, 0.5, 1.0}; lr log-uniform in [1e-6, 1e-3]; batch_size in {32, 64, 128,
256}. Resources are sized from the cluster (one log line says how) unless --trial-cpus,
--data-cpus, --max-concurrent-trials or --set cpus_per_worker=N give them. The objective is a
val metric: a store without a val split needs --set val_fraction=F. --param adds or replaces
one entry (uniform:LO:HI, loguniform:LO:HI, choice:A,B, grid:A,B, or a fixed value); --set
fixes a TrainConfig field of every trial. Re-running with the same --out resumes the sweep. Outputs:
OUT/best/model + metrics.json (score with jobs/score.py --model OUT), OUT/results.{csv,md},
OUT/plots/*.png, OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.common import cli
from pipeline.tune import sweep as tuning


def build_parser() -> argparse.ArgumentParser:
    parser = cli.config_parser(tuning.SweepConfig, __doc__)
    parser.add_argument("--space", help="YAML with a space: and/or a train: section")
    parser.add_argument("--param", action="append", help="NAME=SPEC of the space, repeatable")
    parser.add_argument("--set", action="append", help="FIELD=VALUE of every trial, repeatable")
    return parser


def make_config(values: dict, args: argparse.Namespace) -> tuning.SweepConfig:
    """The sweep: the default space, then --config's and --space's sections, then the flags."""
    space, train = tuning.load_space_file(args.space) if args.space else ({}, {})
    space = {**tuning.DEFAULT_SPACE, **values.pop("space", {}), **space}
    space.update(map(tuning.parse_param, args.param or []))
    train = {**values.pop("train", {}), **train, **dict(map(tuning.parse_param, args.set or []))}
    return tuning.SweepConfig(space=space, train=train, **values)


def sweep(config: tuning.SweepConfig, args: argparse.Namespace) -> str:
    summary = tuning.run_sweep(config)
    print(json.dumps({k: summary[k] for k in ("best", "best_model", "status", "restored")}))
    return (
        f"best model: {summary['best_model']}; table: {config.out}/results.md; "
        f"plots: {config.out}/plots/"
    )


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(sweep, build_parser(), tuning.SweepConfig, argv, build=make_config)


if __name__ == "__main__":
    sys.exit(main())
