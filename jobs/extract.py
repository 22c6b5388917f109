r"""Extract S3D visual, text and VGGish audio features of a dataset into a feature store.

Locally (a new embedded Ray instance):

    python jobs/extract.py --dataset msrvtt --videos data/msrvtt/videos \
        --annotations data/msrvtt/train_val_videodatainfo.json data/msrvtt/test_videodatainfo.json \
        --out features/msrvtt --s3d-weights kinetics400

On a cluster (the driver joins the cluster through RAY_ADDRESS):

    ray job submit --working-dir . -- python jobs/extract.py --dataset activitynet \
        --videos s3://bucket/anet --annotations train.json val_1.json val_2.json \
        --ground-truth activity_net.v1-3.min.json --modalities visual,audio \
        --vggish-weights /models/vggish-10086976.pth --out /mnt/shared/features/anet

--videos may be a local path or a pyarrow filesystem URI (s3://, gs://); --out is a
directory on a filesystem every node sees (local disk on one machine, NFS on a cluster).

Reruns skip videos already in the store; failures are listed in OUT/_failures/.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.common import cli
from pipeline.extract.job import ExtractConfig, extract_features


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(ExtractConfig, __doc__)


def extract(config: ExtractConfig, args: argparse.Namespace) -> str:
    print(json.dumps(extract_features(config), indent=2))
    return f"feature store: {config.out} (failures in {config.out}/_failures/)"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(extract, build_parser(), ExtractConfig, argv)


if __name__ == "__main__":
    sys.exit(main())
