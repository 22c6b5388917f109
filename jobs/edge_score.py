r"""Score videos with an exported model on an edge box: onnxruntime, numpy, PyAV, pyarrow only.

    python jobs/edge_score.py --model outputs/edge --videos path/to/videos --out preds
    python jobs/edge_score.py --model outputs/edge --videos rtsp://camera/stream \
        --max-seconds 60 --out preds
    python jobs/edge_score.py --model outputs/edge/model.onnx --videos clip.mp4 --out preds

--videos takes what jobs/score.py takes (a directory tree, a glob, a list file, a .tar read as
a stream) or one stream URL. OUT/predictions.parquet has jobs/score.py's columns (video_id,
path, top-k labels/indices/probabilities, probabilities, status, error, model_id); a video
that cannot be decoded gets status failed and the reason. Neither torch nor Ray is imported.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.common import cli
from pipeline.edge.runtime import EdgeScoreConfig, score_videos


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(EdgeScoreConfig, __doc__)


def run(config: EdgeScoreConfig, args: argparse.Namespace) -> str:
    summary = score_videos(config)
    print(json.dumps(summary, indent=2))
    return f"predictions: {summary['predictions']}"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(run, build_parser(), EdgeScoreConfig, argv, start_ray=False)


if __name__ == "__main__":
    sys.exit(main())
