"""The synthetic cross-camera benchmark: does the privileged modality help on unseen cameras?

Trains baseline / align / inference / fusion / full x GRU / ViLT x 3 seeds on generated
features (pipeline/synthetic/crosscam.py) and writes OUT/benchmark.md and OUT/benchmark.json
(Acc-1 / Acc-5 on the unseen test cameras, mean and spread over seeds):

    python jobs/crosscam.py --out outputs/benchmark            # about 5-10 minutes on 2 CPUs
    python jobs/crosscam.py --out outputs/benchmark-quick --quick   # smoke test, ~1 minute
    ray job submit --working-dir . -- python jobs/crosscam.py --out /mnt/shared/benchmark

Each cell runs the project's training loop through build_trainer in Ray Train local mode
(one process per cell, cells in parallel as Ray tasks of one CPU each).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.synthetic.crosscam import BenchmarkPlan, quick_plan, run_benchmark  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="small smoke-test plan")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    parser.add_argument("--backbones", nargs="+", choices=("gru", "vilt"))
    parser.add_argument("--align-warmup", type=int, help="override the alignment warm-up epochs")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = quick_plan() if args.quick else BenchmarkPlan()
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=tuple(args.seeds))
    if args.backbones:
        plan = dataclasses.replace(plan, backbones=tuple(args.backbones))
    if args.align_warmup is not None:
        plan = dataclasses.replace(plan, train={**plan.train, "align_warmup": args.align_warmup})
    init_ray(args.address, num_cpus=args.num_cpus)
    started = time.time()
    run_benchmark(args.out, plan)
    print((Path(args.out) / "benchmark.md").read_text())
    print(f"wrote {args.out}/benchmark.md and benchmark.json in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
