"""Search the CRIF loss weights and learning rate with Ray Tune (ASHA early stopping).

    python jobs/tune.py --features outputs/features --out outputs/tune --num-samples 16
    python jobs/tune.py --features F --out O --num-samples 8 --param lr=loguniform:1e-4:1e-2 \
        --param beta=choice:0.5,1.0 --param gamma=0.5 --set epochs=6 --set cpus_per_worker=0.5
    python jobs/tune.py --features F --out O --space sweep.yaml   # {space: {...}, train: {...}}
    ray job submit --working-dir . -- python jobs/tune.py --features /mnt/shared/features \
        --out /mnt/shared/tune --num-samples 32 --set num_workers=2

Default space (the paper's ranges): alpha_sim, alpha_align uniform in [0.1, 2.0]; beta, gamma
in {0.1, 0.2, 0.5, 1.0}; lr log-uniform in [5e-5, 5e-3]. --param adds or replaces one entry
(uniform:LO:HI, loguniform:LO:HI, choice:A,B, grid:A,B, or a fixed value); --set fixes a
TrainConfig field of every trial. Re-running with the same --out resumes the sweep. Outputs:
OUT/best/model + metrics.json (score with jobs/score.py --model OUT), OUT/results.{csv,md},
OUT/plots/*.png, OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.tune import sweep as tuning  # noqa: E402
from pipeline.common.ray_utils import init_ray  # noqa: E402


def parse_args(argv=None) -> tuple[tuning.SweepConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", required=True, help="feature store directory")
    parser.add_argument("--out", required=True, help="sweep directory (re-run to resume)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--space", help="YAML with a space: and/or a train: section")
    parser.add_argument("--param", action="append", default=[], help="NAME=SPEC, repeatable")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE, repeatable")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    parser.add_argument("--searcher", choices=("random", "optuna"), default="random")
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--metric", help="default val/acc1 (val/precision@1 multi-label)")
    parser.add_argument("--trial-cpus", type=float, default=0.25)
    parser.add_argument("--data-cpus", type=float, default=1.0)
    parser.add_argument("--max-concurrent-trials", type=int)
    parser.add_argument(
        "--materialize", action=argparse.BooleanOptionalAction, help="default: <1GiB"
    )
    parser.add_argument("--top-trials", type=int, default=5, help="learning curves drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance")
    args = parser.parse_args(argv)
    space, train = tuning.load_space_file(args.space) if args.space else ({}, {})
    space = {**tuning.DEFAULT_SPACE, **space, **dict(map(tuning.parse_param, args.param))}
    train = {**train, **dict(map(tuning.parse_param, args.set))}
    options = {k: getattr(args, k) for k in ("scheduler", "searcher", "grace_period", "metric")}
    options.update({k: getattr(args, k) for k in ("trial_cpus", "data_cpus", "seed", "address")})
    options.update(materialize=args.materialize, top_trials=args.top_trials)
    config = tuning.SweepConfig(
        features=args.features, out=args.out, num_samples=args.num_samples, space=space,
        train=train, reduction_factor=args.reduction_factor,
        max_concurrent_trials=args.max_concurrent_trials, **options,
    )  # fmt: skip
    return config, args


def main(argv=None) -> int:
    try:
        config, args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_ray(args.address, num_cpus=args.num_cpus)
    summary = tuning.run_sweep(config)
    print(json.dumps({k: summary[k] for k in ("best", "best_model", "status", "restored")}))
    print(f"best model: {summary['best_model']}; table: {config.out}/results.md; "
          f"plots: {config.out}/plots/")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
