r"""Export a trained model's visual path (S3D + CRIF) to ONNX for torch-free edge scoring.

    python jobs/export.py --model outputs/run --out outputs/edge
    python jobs/export.py --model outputs/run --out outputs/edge --int8 \
        --calibration outputs/features          # a store's training videos, or a video folder

Writes OUT/model.onnx (a video's clips -> its class probabilities), OUT/backbone.onnx and
OUT/head.onnx (clips -> S3D features -> probabilities, the pair jobs/edge_score.py runs),
optionally OUT/backbone.int8.onnx, and OUT/model.json (preprocessing, class names, model id,
S3D set-up, file hashes; the same record is inside each ONNX file). The export is refused,
and nothing written, when the S3D set-up cannot be rebuilt as recorded or ONNX Runtime does
not reproduce PyTorch within 1e-4. No Ray is started.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.common import cli
from pipeline.edge.export import ExportConfig, export_model


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(ExportConfig, __doc__)


def run(config: ExportConfig, args: argparse.Namespace) -> str:
    summary = export_model(config)
    print(json.dumps(summary, indent=2))
    return f"exported: {summary['out']}"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(run, build_parser(), ExportConfig, argv, start_ray=False)


if __name__ == "__main__":
    sys.exit(main())
