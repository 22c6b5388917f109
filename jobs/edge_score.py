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
from pipeline.edge.metadata import ExportError
from pipeline.edge.runtime import EdgeScoreConfig, score_videos


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(EdgeScoreConfig, __doc__)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        config, _ = cli.parse_config(parser, EdgeScoreConfig, argv)
        summary = score_videos(config)
    except (ExportError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    print(f"predictions: {summary['predictions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
