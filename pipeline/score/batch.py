"""Batch scoring of video archives with a trained CRIF model (visual path only).

    summary = score_videos(ScoreConfig(model="runs/crif", videos="archive.tar", out="preds"))

Two Ray Data stages, both resumable:

1. Visual features, by the extraction job's own code (:func:`pipeline.extract.job.extract_modality`)
   with exactly the S3D preprocessing and weights recorded in the model's checkpoint, into
   ``OUT/_features``: decode tasks -> S3D actor pool. A different S3D set-up is refused.
   With ``features=`` an existing feature store is read instead (same check on its config).
2. The CRIF head in an actor pool: x -> x_a -> x_c and t_r -> fused -> top-k. Finished
   videos go to atomic parts under ``OUT/_parts/<model id>/``.

Finally ``OUT/predictions.parquet`` (and ``.jsonl``/``.csv`` on request) is rewritten
atomically with one row per video: the scored ones (status ``ok``) and the ones that could
not be decoded (status ``failed`` with the reason). A rerun scores only what is missing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import store
from pipeline.artifact import ExtractorSetup, model_id, read_checkpoint_info, resolve_model_dir
from pipeline.common.configs import check_choices
from pipeline.extract.job import Decoder, ExtractConfig, extract_modality, parts_directory

__all__ = [
    "CRIFScorer",
    "OutputFormat",
    "ScoreConfig",
    "extract_visual",
    "predict_visual",
    "score_videos",
    "scoring_pipeline",
    "visual_description",
]

logger = logging.getLogger(__name__)

FEATURES_DIR = "_features"
PARTS_DIR = "_parts"
OutputFormat = Literal["parquet", "jsonl", "csv"]
FORMATS = get_args(OutputFormat)


@dataclass(frozen=True)
class ScoreConfig:
    """One scoring run; jobs/score.py maps its flags 1:1 onto these fields (the field comments
    are the flags' help)."""

    model: str  # RUN_DIR, RUN_DIR/model, a Tune best/ dir, or a checkpoint directory
    out: str  # output directory of the predictions (a rerun scores only what is missing)
    videos: str | None = None  # videos to score: directory, glob, list file of paths, or .tar
    features: str | None = None  # an existing feature store to score instead of --videos
    format: OutputFormat = "parquet"  # file format of OUT/predictions.*
    top_k: int = 5  # classes (with probabilities) listed per video
    s3d_weights: str | None = None  # a local S3D .pth when the model was trained on one
    limit: int | None = None  # only the first N videos
    clip_batch_size: int = 4  # S3D clips per model call
    video_batch_size: int = 64  # videos per CRIF model call
    model_actors: int | None = None  # actors per model (default: GPUs when present, else 1)
    use_gpu: bool | None = None  # run the models on GPUs (default: when the cluster has them)
    # video decoder: auto (the fastest installed backend that decodes each file), pyav,
    # decord or torchcodec; the features' preprocessing is the model's either way
    decoder: Decoder = "auto"
    decode_timeout: float = 60.0  # seconds a video may take to open, and at least to decode

    def __post_init__(self):
        if (self.videos is None) == (self.features is None):
            raise ValueError("give exactly one of videos (to decode) or features (a store)")
        check_choices(self)
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")


def visual_description(info: dict, s3d_weights: str | None = None) -> dict:
    """Rebuild the model's S3D extractor; its description must equal the recorded one."""
    from feature_extractors import build_extractor

    recorded = ExtractorSetup.from_metadata(info, "visual")
    config = dict(recorded.config)
    if s3d_weights:
        config["weights"] = s3d_weights
    description = build_extractor(recorded.extractor, config).describe()
    recorded.check_matches(
        ExtractorSetup.from_description(description), "S3D weights/preprocessing"
    )
    return description


class CRIFScorer:
    """Actor: padded visual sequences -> CRIF visual-path probabilities -> top-k labels."""

    def __init__(self, model_dir: str, top_k: int, model_id: str, device: str = "cpu"):
        import torch

        from pipeline.artifact import load_model

        self.torch = torch
        self.model, info = load_model(model_dir, device=device)
        self.device, self.model_id = device, model_id
        self.task, self.class_names = info["task"], info["class_names"]
        self.top_k = min(top_k, len(self.class_names))
        self.width = info["modalities"]["visual"]["dim"]

    def __call__(self, table: pa.Table) -> pa.Table:
        from pipeline.train.data import pad_sequences

        visual, mask = pad_sequences(table.column("visual"), self.width)
        with self.torch.inference_mode():
            logits = self.model.predict(visual.to(self.device), mask.to(self.device)).float()
        probabilities = (
            (logits.softmax(-1) if self.task == "single_label" else logits.sigmoid()).cpu().numpy()
        )
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, : self.top_k]
        return pa.table(
            {
                "video_id": table.column("video_id"),
                "top_k_labels": [[self.class_names[i] for i in row] for row in order],
                "top_k_indices": pa.array(order.tolist(), pa.list_(pa.int32())),
                "top_k_probabilities": pa.array(
                    np.take_along_axis(probabilities, order, 1).tolist(), pa.list_(pa.float32())
                ),
                "probabilities": pa.array(probabilities.tolist(), pa.list_(pa.float32())),
            }
        )


def score_videos(config: ScoreConfig) -> dict:
    """Run the job; return the summary (videos/s, ok, failed, output path)."""
    import ray

    started = time.perf_counter()
    model_dir = resolve_model_dir(config.model)
    info = read_checkpoint_info(model_dir)
    identifier = model_id(model_dir)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if config.use_gpu is None else config.use_gpu
    )
    paths, failures, feature_files, skipped = _features(config, info, out, use_gpu)
    parts = out / PARTS_DIR / identifier
    done, scored = predict_visual(
        model_dir,
        feature_files,
        parts,
        top_k=config.top_k,
        video_batch_size=config.video_batch_size,
        model_actors=config.model_actors,
        use_gpu=use_gpu,
    )
    table = _predictions_table(parts, failures, paths, identifier)
    output = _write_predictions(table, out, config.format)
    seconds = time.perf_counter() - started
    ok = int(pa.compute.sum(pa.compute.equal(table.column("status"), "ok")).as_py() or 0)
    summary = {
        "predictions": str(output),
        "model_id": identifier,
        "ok": ok,
        "failed": table.num_rows - ok,
        "scored_now": scored,
        "already_scored": done,
        "skipped_non_video": skipped,
        "seconds": round(seconds, 2),
        "videos_per_second": round(scored / seconds, 3) if seconds else None,
    }
    logger.info(
        f"[score] {summary['ok']} ok, {summary['failed']} failed, {seconds:.1f} s -> {output}"
    )
    return summary


def predict_visual(
    model_dir: Path,
    feature_files: list[str],
    parts: Path,
    *,
    top_k: int = 5,
    video_batch_size: int = 64,
    model_actors: int | None = None,
    use_gpu: bool = False,
) -> tuple[int, int]:
    """Score the visual features of ``feature_files`` with a :class:`CRIFScorer` actor pool.

    Predictions go to atomic parts under ``parts``; videos already there are skipped (and
    no pipeline starts when nothing is left). Returns (videos already scored, scored now).
    """
    import ray

    done = _done_ids(parts)
    scored = 0
    if not feature_files:
        return len(done), 0
    ids = pq.read_table(feature_files, columns=["video_id"]).column("video_id").to_pylist()
    if set(ids) <= done:
        return len(done), 0
    dataset = ray.data.read_parquet(feature_files, columns=["video_id", "visual"])
    dataset = dataset.filter(lambda row, done=frozenset(done): row["video_id"] not in done)
    dataset = scoring_pipeline(
        dataset,
        model_dir,
        top_k=top_k,
        video_batch_size=video_batch_size,
        model_actors=model_actors,
        use_gpu=use_gpu,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows:
            store.atomic_write_table(batch, parts / f"part-{uuid.uuid4().hex}.parquet")
            scored += batch.num_rows
            logger.info(f"[score] {len(done) + scored} videos scored")
    return len(done), scored


def scoring_pipeline(
    dataset,
    model_dir: Path,
    *,
    top_k: int = 5,
    video_batch_size: int = 64,
    model_actors: int | None = None,
    use_gpu: bool = False,
):
    """A Ray dataset of (video_id, visual) rows -> predictions, by a CRIFScorer actor pool."""
    import ray

    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=model_actors or 1)
    return dataset.map_batches(
        CRIFScorer,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "top_k": top_k,
            "model_id": model_id(Path(model_dir)),
            "device": "cuda" if use_gpu else "cpu",
        },
        batch_size=video_batch_size,
        batch_format="pyarrow",
        compute=pool,
        num_gpus=1 if use_gpu else 0,
        num_cpus=1,
    )


def _features(config: ScoreConfig, info: dict, out: Path, use_gpu: bool):
    """(paths by id, failure rows, feature files, skipped members) for the videos to score."""
    description = visual_description(info, config.s3d_weights)
    if config.features:
        metadata = store.read_dataset_json(config.features)
        ExtractorSetup.from_metadata(info, "visual").check_matches(
            ExtractorSetup.from_metadata(metadata, "visual"), f"feature store {config.features}"
        )
        return {}, [], store.list_parquet_files(config.features), 0
    from pipeline.ingest.manifest import read_folder

    manifest = read_folder(config.videos)
    rows = manifest.rows[: config.limit] if config.limit else list(manifest.rows)
    files, failures = extract_visual(
        description,
        rows,
        out / FEATURES_DIR,
        use_gpu=use_gpu,
        videos=str(config.videos),
        clip_batch_size=config.clip_batch_size,
        model_actors=config.model_actors,
        decoder=config.decoder,
        decode_timeout=config.decode_timeout,
    )
    return {row.video_id: row.path for row in rows}, failures, files, manifest.skipped


def extract_visual(
    description: dict,
    rows: list,
    out: Path,
    *,
    use_gpu: bool,
    shift: dict | None = None,
    videos: str = "",
    clip_batch_size: int = 4,
    model_actors: int | None = None,
    decoder: str = "auto",
    decode_timeout: float = 60.0,
) -> tuple[list[str], list[dict]]:
    """S3D features of manifest ``rows``, made exactly as ``description`` says, under ``out``.

    The extraction job's own pipeline (resumable parts); ``shift`` simulates a camera shift
    at decode time (pipeline.score.shifts; give each shift its own ``out``); ``decoder`` and
    ``decode_timeout``: the decode step's policy and deadline (ExtractConfig). Returns (part
    files, failure rows of these videos).
    """
    s3d = description["config"]
    extract_config = ExtractConfig(
        videos=videos,
        out=str(out),
        modalities=("visual",),
        s3d_weights=s3d["weights"],
        fps=s3d["fps"],
        clip_len=s3d["clip_len"],
        clip_stride=s3d["clip_stride"],
        channels_last=s3d.get("channels_last", False),
        resize_method=s3d.get("resize_method", "decoder"),
        decoder=decoder,
        decode_timeout=decode_timeout,
        clip_batch_size=clip_batch_size,
        model_actors=model_actors,
        use_gpu=use_gpu,
    )
    out = Path(out)
    extract_modality(extract_config, "visual", description, rows, out, use_gpu, shift=shift)
    parts = parts_directory(out, "visual", description, shift)
    files = sorted(str(p) for p in parts.glob("*.parquet"))
    wanted = {row.video_id for row in rows}
    failures = [f for f in store.read_failures(out).to_pylist() if f["video_id"] in wanted]
    return files, failures


def _done_ids(parts: Path) -> set[str]:
    files = sorted(parts.glob("*.parquet")) if parts.is_dir() else []
    return (
        set(pq.read_table(files, columns=["video_id"]).column("video_id").to_pylist())
        if files
        else set()
    )


def _predictions_table(parts: Path, failures: list[dict], paths: dict, model_id: str) -> pa.Table:
    files = sorted(parts.glob("*.parquet")) if parts.is_dir() else []
    rows: dict[str, dict] = {}
    for failure in failures:  # later records win; a success below overrides them
        rows[failure["video_id"]] = {
            "video_id": failure["video_id"],
            "status": "failed",
            "error": failure["error"],
        }
    if files:
        for row in pq.read_table(files).to_pylist():
            rows[row["video_id"]] = {**row, "status": "ok", "error": None}
    ordered = [rows[key] for key in sorted(rows)]
    return pa.table(
        {
            "video_id": pa.array([r["video_id"] for r in ordered], pa.string()),
            "path": pa.array([paths.get(r["video_id"]) for r in ordered], pa.string()),
            "top_k_labels": pa.array(
                [r.get("top_k_labels") for r in ordered], pa.list_(pa.string())
            ),
            "top_k_probabilities": pa.array(
                [r.get("top_k_probabilities") for r in ordered], pa.list_(pa.float32())
            ),
            "top_k_indices": pa.array(
                [r.get("top_k_indices") for r in ordered], pa.list_(pa.int32())
            ),
            "probabilities": pa.array(
                [r.get("probabilities") for r in ordered], pa.list_(pa.float32())
            ),
            "status": pa.array([r["status"] for r in ordered], pa.string()),
            "error": pa.array([r["error"] for r in ordered], pa.string()),
            "model_id": pa.array([model_id] * len(ordered), pa.string()),
        }
    )


def _write_predictions(table: pa.Table, out: Path, format: str) -> Path:
    path = out / "predictions.parquet"
    store.atomic_write_table(table, path)
    if format == "jsonl":
        lines = "".join(json.dumps(row) + "\n" for row in table.to_pylist())
        store.atomic_write_bytes(out / "predictions.jsonl", lines.encode())
        return out / "predictions.jsonl"
    if format == "csv":
        import pyarrow.csv as pacsv

        table = table.drop_columns(["top_k_indices", "probabilities"])
        flat = table.set_column(
            table.schema.get_field_index("top_k_labels"),
            "top_k_labels",
            pa.array(
                ["|".join(v) if v else None for v in table.column("top_k_labels").to_pylist()]
            ),
        ).set_column(
            table.schema.get_field_index("top_k_probabilities"),
            "top_k_probabilities",
            pa.array(
                [
                    "|".join(f"{p:.6f}" for p in v) if v else None
                    for v in table.column("top_k_probabilities").to_pylist()
                ]
            ),
        )
        sink = pa.BufferOutputStream()
        pacsv.write_csv(flat, sink)
        store.atomic_write_bytes(out / "predictions.csv", sink.getvalue().to_pybytes())
        return out / "predictions.csv"
    return path
