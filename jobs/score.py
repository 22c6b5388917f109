"""Score a folder or archive of videos with a trained CRIF model (no captions or audio needed).

    python jobs/score.py --model outputs/run --videos path/to/videos --out outputs/predictions
    python jobs/score.py --model outputs/run --videos archive.tar --out preds --format jsonl
    ray job submit --working-dir . -- python jobs/score.py --model /mnt/shared/run \
        --videos s3://bucket/archive --out /mnt/shared/predictions

--videos takes a directory tree, a glob, a text file of paths/URIs, or a .tar archive (read as
a stream, never extracted). --features scores an existing feature store instead. Reruns score
only what is missing; every video gets a row, with status ok or failed and the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.score.batch import FORMATS, ScoreConfig, score_videos  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="RUN_DIR (or RUN_DIR/model) of a training run"
    )
    parser.add_argument("--out", required=True, help="output directory for predictions")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="directory, glob, list file or .tar of videos")
    source.add_argument("--features", help="an existing feature store to score instead")
    parser.add_argument("--format", choices=FORMATS, default="parquet")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--s3d-weights", help="local S3D .pth when the model was trained on one")
    parser.add_argument("--limit", type=int, help="only the first N videos")
    parser.add_argument("--clip-batch-size", type=int, default=4)
    parser.add_argument("--model-actors", type=int)
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a new local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray")
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("address", "num_cpus")}
    return ScoreConfig(**fields), args


def main(argv=None) -> int:
    try:
        config, args = parse_args(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_ray(args.address, num_cpus=args.num_cpus)
    summary = score_videos(config)
    print(json.dumps(summary, indent=2))
    print(f"predictions: {summary['predictions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
