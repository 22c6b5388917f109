"""The synthetic cross-camera benchmark: does the privileged modality help on unseen cameras?

Trains every ablation (baseline / align / inference / fusion / full) x strategy (end2end,
multistage) x semantic-gradient mode x backbone x seed on generated features
(pipeline/synthetic/crosscam.py) and writes OUT/benchmark.md and OUT/benchmark.json (Acc-1 /
Acc-5 on the unseen test cameras, mean and spread over seeds, gain over the baseline):

    python jobs/crosscam.py --out outputs/benchmark            # about 10 minutes on 2 CPUs
    python jobs/crosscam.py --out outputs/crosscam-hard --config configs/crosscam-hard.yaml
    python jobs/crosscam.py --out outputs/benchmark-quick --quick   # smoke test, ~1 minute
    ray job submit --working-dir . -- python jobs/crosscam.py --out /mnt/shared/benchmark

The plan is configs/crosscam-full.yaml (--quick: configs/crosscam-quick.yaml; --config: any
BenchmarkPlan file, e.g. configs/crosscam-hard.yaml: each training camera films mostly its
own class); --seeds, --backbones, --strategies, ... override it. Each cell runs the project's
training loop through build_trainer in Ray Train local mode (one process per cell, cells in
parallel as Ray tasks of one CPU each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.common import cli
from pipeline.common.configs import build_config
from pipeline.synthetic.crosscam import BenchmarkPlan, run_benchmark

FULL, QUICK = "crosscam-full", "crosscam-quick"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.config_parser(BenchmarkPlan, __doc__)
    parser.add_argument("--out", required=True, help="output directory (required)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the smoke-test plan configs/{QUICK}.yaml, not configs/{FULL}.yaml (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--align-warmup", type=int, help="alignment warm-up epochs of every cell (train field)"
    )
    return parser


def make_plan(values: dict, args: argparse.Namespace) -> BenchmarkPlan:
    if args.align_warmup is not None:
        values["train"] = {**values.get("train", {}), "align_warmup": args.align_warmup}
    return build_config(BenchmarkPlan, values)


def benchmark(plan: BenchmarkPlan, args: argparse.Namespace) -> str:
    started = time.time()
    run_benchmark(args.out, plan)
    print((Path(args.out) / "benchmark.md").read_text())
    return f"wrote {args.out}/benchmark.md and benchmark.json in {time.time() - started:.0f}s"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    default = QUICK if "--quick" in argv else FULL
    return cli.run_job(
        benchmark, build_parser(), BenchmarkPlan, argv, default_config=default, build=make_plan
    )


if __name__ == "__main__":
    sys.exit(main())
