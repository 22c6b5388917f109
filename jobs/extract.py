"""Extract S3D visual, text and VGGish audio features of a dataset into a feature store.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.ray_utils import init_ray  # noqa: E402
from pipeline.extract.job import ExtractConfig, extract_features  # noqa: E402


def parse_args(argv=None) -> tuple[ExtractConfig, argparse.Namespace]:
    defaults = ExtractConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["msrvtt", "activitynet"], default=defaults.dataset)
    parser.add_argument("--videos", required=True, help="video root: local path or URI")
    parser.add_argument("--annotations", nargs="+", required=True, help="annotation JSON files")
    parser.add_argument("--out", required=True, help="feature store directory")
    parser.add_argument("--ground-truth", help="ActivityNet activity_net.v1-3.min.json")
    parser.add_argument("--split-scheme", choices=["official", "paper"], default="official")
    parser.add_argument(
        "--task",
        choices=["single_label", "multi_label"],
        default="single_label",
        help="ActivityNet: majority label, or every label of a video",
    )
    parser.add_argument("--name", help="store name (default: the dataset's)")
    parser.add_argument(
        "--modalities", default=",".join(defaults.modalities), help="visual,text,audio subset"
    )
    parser.add_argument("--limit", type=int, help="only the first N videos (quick runs)")
    parser.add_argument(
        "--s3d-weights",
        default=defaults.s3d_weights,
        help="kinetics400 (torch hub cache), a local .pth, or random (no pretrained meaning)",
    )
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--clip-len", type=int, default=defaults.clip_len)
    parser.add_argument("--clip-stride", type=int, default=defaults.clip_stride)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--text-model", default=defaults.text_model)
    parser.add_argument("--text-pooling", choices=["mean", "cls"], default=defaults.text_pooling)
    parser.add_argument("--vggish-weights", help="torchvggish .pth, or random")
    parser.add_argument("--vggish-pca", help="vggish_pca_params.npz for PCA post-processing")
    parser.add_argument("--clip-batch-size", type=int, default=defaults.clip_batch_size)
    parser.add_argument("--model-actors", type=int, help="actors per model (default: #GPUs or 1)")
    parser.add_argument(
        "--s3d-execution",
        choices=["auto", "eager", "channels_last", "compile"],
        default=defaults.s3d_execution,
        help="how S3D runs (same features): auto compiles on CPU when cached or worth it",
    )
    parser.add_argument("--model-threads", type=int, help="torch threads per CPU model actor")
    parser.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a new local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray")
    args = parser.parse_args(argv)
    config = ExtractConfig(
        dataset=args.dataset,
        videos=args.videos,
        annotations=tuple(args.annotations),
        out=args.out,
        ground_truth=args.ground_truth,
        split_scheme=args.split_scheme,
        task=args.task,
        name=args.name,
        modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()),
        limit=args.limit,
        s3d_weights=args.s3d_weights,
        fps=args.fps,
        clip_len=args.clip_len,
        clip_stride=args.clip_stride,
        channels_last=args.channels_last,
        text_model=args.text_model,
        text_pooling=args.text_pooling,
        vggish_weights=args.vggish_weights,
        vggish_pca=args.vggish_pca,
        clip_batch_size=args.clip_batch_size,
        model_actors=args.model_actors,
        s3d_execution=args.s3d_execution,
        model_threads=args.model_threads,
        use_gpu=args.use_gpu,
    )
    return config, args


def main(argv=None) -> int:
    try:
        config, args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    init_ray(args.address, num_cpus=args.num_cpus)
    summary = extract_features(config)
    print(json.dumps(summary, indent=2))
    print(f"feature store: {config.out} (failures in {config.out}/_failures/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
