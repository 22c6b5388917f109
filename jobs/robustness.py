r"""Score trained models on the test videos under simulated camera shifts; report the drops.

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

from pipeline.common import cli
from pipeline.score.robustness import RobustnessConfig, run_robustness


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(RobustnessConfig, __doc__)


def robustness(config: RobustnessConfig, args: argparse.Namespace) -> str:
    summary = run_robustness(config)
    print(json.dumps(summary["summary"], indent=2))
    return f"report: {summary['report']}\nplot: {summary['plot']}"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(robustness, build_parser(), RobustnessConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
