r"""Score a folder or archive of videos with a trained CRIF model (no captions or audio needed).

    python jobs/score.py --model outputs/run --videos path/to/videos --out outputs/predictions
    python jobs/score.py --model outputs/run --videos archive.tar --out preds --format jsonl
    ray job submit --working-dir . -- python jobs/score.py --model /mnt/shared/run \
        --videos s3://bucket/archive --out /mnt/shared/predictions

--videos takes a directory tree, a glob, a text file of paths/URIs, or a .tar archive (read as
a stream, never extracted). --features scores an existing feature store instead (give one of
the two). Reruns score only what is missing; every video gets a row, with status ok or failed
and the reason.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.common import cli
from pipeline.score.batch import ScoreConfig, score_videos


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(ScoreConfig, __doc__)


def score(config: ScoreConfig, args: argparse.Namespace) -> str:
    summary = score_videos(config)
    print(json.dumps(summary, indent=2))
    return f"predictions: {summary['predictions']}"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(score, build_parser(), ScoreConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
