"""Score trained models on the test videos under simulated camera shifts; report the drops.

    python jobs/robustness.py --model runs/baseline --model runs/full \
        --videos data/videos --annotations data/annotations/*_videodatainfo.json --out rb
    python jobs/robustness.py --model runs/baseline --model runs/full --videos features \
        --out rb --quick
    ray job submit --working-dir . -- python jobs/robustness.py --model /mnt/shared/runs/full \
        --videos /mnt/shared/msrvtt/videos --annotations /mnt/shared/msrvtt/test.json --out rb

--videos is the video directory or a feature store extracted from it (its dataset.json names
the videos and annotations; its clean features are reused when the S3D set-up matches).
--annotations: MSR-VTT-format JSON with the labels; the --split (test) videos are scored.
Shifts (pipeline/score/shifts.py) at severities 1-3; --quick: severity 2 only, 24 test videos.
Writes OUT/robustness.md, robustness.png, robustness.json; a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.score.robustness import RobustnessConfig, run_robustness  # noqa: E402
from pipeline.score.shifts import SEVERITIES, SHIFTS  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", dest="models", action="append", required=True)
    parser.add_argument("--videos", required=True, help="video directory or feature store")
    parser.add_argument("--out", required=True)
    parser.add_argument("--annotations", nargs="+", default=[], help="MSR-VTT JSON files")
    parser.add_argument("--split", default="test")
    parser.add_argument("--split-scheme", choices=("official", "paper"), default="official")
    parser.add_argument("--shifts", nargs="+", choices=list(SHIFTS), default=list(SHIFTS))
    parser.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N videos of the split")
    parser.add_argument("--quick", action="store_true", help="severity 2 only, 24 test videos")
    parser.add_argument("--s3d-weights", help="local S3D .pth when the models used one")
    parser.add_argument("--clip-batch-size", type=int, default=4)
    parser.add_argument("--model-actors", type=int)
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a new local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray")
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("address", "num_cpus")}
    for name in ("models", "annotations", "shifts", "severities"):
        fields[name] = tuple(fields[name])
    return RobustnessConfig(**fields), args


def main(argv=None) -> int:
    try:
        config, args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_ray(args.address, num_cpus=args.num_cpus)
    summary = run_robustness(config)
    print(json.dumps(summary["summary"], indent=2))
    print(f"report: {summary['report']}\nplot: {summary['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
