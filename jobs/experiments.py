"""Reproduce the paper's tables on your features: ablation, alignment or backbone grids.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.tune.grids import GRID_CHOICES, ExperimentConfig, run_experiments  # noqa: E402
from pipeline.tune.sweep import parse_param  # noqa: E402


def parse_args(argv=None) -> tuple[ExperimentConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", help="feature store (omit with --quick)")
    parser.add_argument("--out", required=True, help="output directory (re-run to resume)")
    parser.add_argument("--grid", required=True, choices=GRID_CHOICES)
    parser.add_argument("--quick", action="store_true", help="small, fast settings")
    parser.add_argument("--seeds", type=int, help="seeds per cell (default 3, 2 with --quick)")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE, repeatable")
    parser.add_argument("--trial-cpus", type=float, default=0.25)
    parser.add_argument("--data-cpus", type=float, default=1.0)
    parser.add_argument("--max-concurrent-trials", type=int)
    parser.add_argument(
        "--materialize", action=argparse.BooleanOptionalAction, help="default: <1GiB"
    )
    parser.add_argument("--tsne-classes", type=int, default=5)
    parser.add_argument("--tsne-per-class", type=int, default=100)
    parser.add_argument("--tsne-pairs", type=int, default=20)
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS or local)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance")
    args = parser.parse_args(argv)
    config = ExperimentConfig(
        out=args.out, grid=args.grid, features=args.features, quick=args.quick,
        seeds=args.seeds, train=dict(map(parse_param, args.set)), trial_cpus=args.trial_cpus,
        data_cpus=args.data_cpus, max_concurrent_trials=args.max_concurrent_trials,
        materialize=args.materialize, tsne_classes=args.tsne_classes,
        tsne_per_class=args.tsne_per_class, tsne_pairs=args.tsne_pairs, address=args.address,
    )  # fmt: skip
    return config, args


def main(argv=None) -> int:
    try:
        config, args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_ray(args.address, num_cpus=args.num_cpus)
    summary = run_experiments(config)
    for table in summary["tables"].values():
        print(Path(table).read_text())
    print(json.dumps({k: summary[k] for k in ("tables", "tsne", "results", "failed")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
