"""The feature store: Parquet files plus ``dataset.json``, as fixed in DESIGN.md.

Layout of a store directory::

    dataset.json         name, task, class_names, modalities {name: {dim, extractor, ...}}
    shard-00000.parquet  video_id, split, label | labels, visual, text, audio (+ extra columns)
    _failures/*.parquet  video_id, path, stage, error (+ reason, modality, attempts, time)
    _parts/...           staging area of the extraction job (ignored by readers)

Readers accept any number of ``*.parquet`` files in any row order and skip every
directory whose name starts with ``_`` or ``.``. Every file is written atomically:
it is written under a hidden temporary name and renamed into place.

Extra modalities: besides the contract's ``visual``, ``text`` and ``audio`` (their names,
types and the fixed widths of MODALITY_DIMS are unchanged), ``dataset.json`` may declare
other modalities, filled by other registered extractors (feature_extractors). Each is named
by a lowercase identifier that is no other column's name (not ``video_id``, ``split``,
``label``, ``labels``, ``bucket``, nor ending in ``_clip_times``), has the same record
``{dim, extractor, weights, config}`` and a ``list<list<float32>>`` column of that width,
null where missing; validation checks them as it checks the three. Readers that know only
the contract's modalities ignore them, as they ignore ``visual_clip_times``.

Format 2 (``dataset.json`` ``format_version: 2``; absent means 1, read the same way) adds,
beyond the contract: per clip modality a ``<modality>_decode`` struct column (DECODE_RECORD:
the backend that decoded the video, codec, rotation applied, frames, duration, variable
rate); a ``decoding`` record in ``dataset.json`` (the decoder policy, the resize method and,
for the decoder's scaler, its measured difference from the reference resize); and failure
rows that are current: one per (video_id, modality, stage) with ``reason`` (timeout, crashed,
undecodable, not_found, ...), ``attempts`` and ``time`` of the latest one. Format-1 failure
files (one file per run, rows repeated) are read, merged and replaced by the next run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Re-exported: users' tools and tests import the atomic writers from here.
from pipeline.common.atomic import atomic_write_bytes, atomic_write_table, atomic_write_text

__all__ = [
    "DATASET_JSON",
    "DECODE_RECORD",
    "FORMAT_VERSION",
    "FAILURES_DIR",
    "MODALITY_DIMS",
    "SPLITS",
    "TASKS",
    "Modality",
    "Split",
    "Task",
    "StoreError",
    "atomic_write_bytes",
    "atomic_write_table",
    "check_modality_name",
    "failure_schema",
    "list_parquet_files",
    "read_dataset_json",
    "read_failures",
    "read_store",
    "record_failures",
    "sequence_to_numpy",
    "split_sizes",
    "store_schema",
    "validate_store",
    "write_dataset_json",
    "write_failures",
]

DATASET_JSON = "dataset.json"
FAILURES_DIR = "_failures"
Task = Literal["single_label", "multi_label"]
Split = Literal["train", "val", "test"]
Modality = Literal["visual", "text", "audio"]
TASKS = get_args(Task)
SPLITS = get_args(Split)
MODALITIES = get_args(Modality)
RESERVED_COLUMNS = ("video_id", "split", "label", "labels", "bucket")
# Fixed feature widths; text depends on the text model and is read from dataset.json.
MODALITY_DIMS = {"visual": 1024, "audio": 128}

SEQUENCE = pa.list_(pa.list_(pa.float32()))
FORMAT_VERSION = 2
# How each video of a clip modality was decoded (column <modality>_decode, format 2).
DECODE_RECORD = pa.struct(
    [
        pa.field("backend", pa.string()),
        pa.field("codec", pa.string()),
        pa.field("rotation", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("duration", pa.float32()),
        pa.field("variable_rate", pa.bool_()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)
CURRENT_FAILURES = "failures.parquet"


class StoreError(ValueError):
    """A feature store does not follow the contract; the message says where and how."""


def split_sizes(counts: dict[str, int]) -> str:
    """``split sizes: train N, val N, test N`` (other split names after them)."""
    names = [*SPLITS, *sorted(set(counts) - set(SPLITS))]
    return "split sizes: " + ", ".join(f"{name} {counts.get(name, 0)}" for name in names)


def store_schema(task: str) -> pa.Schema:
    """The contract schema of a store of ``task`` (single_label or multi_label)."""
    if task not in TASKS:
        raise StoreError(f"task must be one of {TASKS}, got {task!r}")
    label = (
        pa.field("label", pa.int32())
        if task == "single_label"
        else pa.field("labels", pa.list_(pa.int32()))
    )
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            label,
            pa.field("visual", SEQUENCE),
            pa.field("text", SEQUENCE),
            pa.field("audio", SEQUENCE),
        ]
    )


def failure_schema() -> pa.Schema:
    """The contract's four columns, then format 2's current-row columns."""
    return pa.schema(
        [
            pa.field("video_id", pa.string()),
            pa.field("path", pa.string()),
            pa.field("stage", pa.string()),
            pa.field("error", pa.string()),
            pa.field("reason", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("attempts", pa.int32()),
            pa.field("time", pa.string()),
        ]
    )


# ---------------------------------------------------------------------------- dataset.json


def write_dataset_json(root: str | os.PathLike, metadata: dict[str, Any]) -> None:
    _check_metadata(metadata, Path(root) / DATASET_JSON)
    text = json.dumps(metadata, indent=2, sort_keys=True)
    atomic_write_text(Path(root) / DATASET_JSON, text)


def read_dataset_json(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        raise StoreError(f"{path}: no dataset.json; is {root} a feature store?")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{path}: malformed JSON ({error})") from error
    _check_metadata(metadata, path)
    return metadata


def _check_metadata(metadata: dict[str, Any], where: Path) -> None:
    for key in ("name", "task", "class_names", "modalities"):
        if key not in metadata:
            raise StoreError(f"{where}: missing key {key!r}")
    if metadata["task"] not in TASKS:
        raise StoreError(f"{where}: task must be one of {TASKS}, got {metadata['task']!r}")
    if not metadata["class_names"]:
        raise StoreError(f"{where}: class_names is empty")
    for name, info in metadata["modalities"].items():
        check_modality_name(name, where)
        for key in ("dim", "extractor", "weights", "config"):
            if key not in info:
                raise StoreError(f"{where}: modality {name!r} lacks {key!r}")
        expected = MODALITY_DIMS.get(name)
        if expected is not None and int(info["dim"]) != expected:
            raise StoreError(
                f"{where}: modality {name!r} has dim {info['dim']}, expected {expected}"
            )


def check_modality_name(name: Any, where: str | os.PathLike = "dataset.json") -> None:
    """Raise StoreError unless ``name`` is a contract modality or may be an extra one."""
    if name in MODALITIES:
        return
    if not (isinstance(name, str) and name.isidentifier() and name == name.lower()):
        raise StoreError(f"{where}: unknown modality {name!r} (extra ones: lowercase identifiers)")
    if name in RESERVED_COLUMNS or name.endswith(("_clip_times", "_decode")):
        raise StoreError(f"{where}: unknown modality {name!r} (the name of another column)")


# ---------------------------------------------------------------------------- reading


def list_parquet_files(root: str | os.PathLike) -> list[str]:
    """All ``*.parquet`` files under ``root``, skipping ``_*`` and ``.*`` entries, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: not a directory")
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith(("_", ".")))
        found.extend(
            os.path.join(directory, name)
            for name in files
            if name.endswith(".parquet") and not name.startswith(("_", "."))
        )
    return sorted(found)


def read_store(root: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """Read every row of a store into one table (small stores, tests and scoring)."""
    files = list_parquet_files(root)
    if not files:
        raise StoreError(f"{root}: no .parquet files")
    tables = [pq.read_table(path, columns=list(columns) if columns else None) for path in files]
    return pa.concat_tables(tables, promote_options="default")


def sequence_to_numpy(cell: Any, width: int | None = None) -> np.ndarray | None:
    """A ``list<list<float32>>`` cell (Python lists or Arrow scalar) as a (T, D) float32 array."""
    if cell is None:
        return None
    if isinstance(cell, pa.Scalar):
        cell = cell.as_py()
        if cell is None:
            return None
    array = np.asarray([np.asarray(row, dtype=np.float32) for row in cell], dtype=np.float32)
    if array.ndim != 2 or (width is not None and array.shape[1] != width):
        raise StoreError(f"expected a (T, {width}) sequence, got shape {array.shape}")
    return array


def validate_store(root: str | os.PathLike) -> dict[str, Any]:
    """Check a store against the contract; return its metadata or raise StoreError."""
    metadata = read_dataset_json(root)
    label_column = "label" if metadata["task"] == "single_label" else "labels"
    num_classes = len(metadata["class_names"])
    seen: set[str] = set()
    for path in list_parquet_files(root):
        table = pq.read_table(path)
        names = set(table.column_names)
        for required in ("video_id", "split", label_column):
            if required not in names:
                raise StoreError(f"{path}: missing column {required!r}")
        for name in ("video_id", "split"):
            if not pa.types.is_string(table.schema.field(name).type):
                raise StoreError(f"{path}: column {name!r} must be string")
        for video_id, split in zip(
            table.column("video_id").to_pylist(), table.column("split").to_pylist(), strict=True
        ):
            if video_id in seen:
                raise StoreError(f"{path}: duplicate video_id {video_id!r}")
            seen.add(video_id)
            if split not in SPLITS:
                raise StoreError(f"{path}: video {video_id!r} has split {split!r}")
        _check_labels(table, label_column, num_classes, path)
        for modality in (*MODALITIES, *sorted(set(metadata["modalities"]) - set(MODALITIES))):
            if modality not in names:
                continue
            if table.schema.field(modality).type != SEQUENCE:
                raise StoreError(f"{path}: column {modality!r} must be list<list<float32>>")
            dim = metadata["modalities"].get(modality, {}).get("dim")
            for video_id, cell in zip(
                table.column("video_id").to_pylist(), table.column(modality), strict=True
            ):
                if not cell.is_valid:
                    continue
                array = sequence_to_numpy(cell)
                if array.shape[0] == 0 or (dim is not None and array.shape[1] != dim):
                    raise StoreError(
                        f"{path}: video {video_id!r} {modality} has shape {array.shape}, "
                        f"dataset.json says dim {dim}"
                    )
    return metadata


def _check_labels(table: pa.Table, column: str, num_classes: int, path: str) -> None:
    values = table.column(column).to_pylist()
    flat = [v for item in values for v in (item if isinstance(item, list) else [item])]
    bad = [v for v in flat if v is None or not 0 <= v < num_classes]
    if bad:
        raise StoreError(f"{path}: {column} out of range [0, {num_classes}): {bad[:5]}")


# ---------------------------------------------------------------------------- failures


def write_failures(root: str | os.PathLike, rows: Iterable[dict[str, str]], tag: str) -> int:
    """Record failed videos as one atomic Parquet file ``_failures/<tag>.parquet`` (as is;
    the extraction job keeps current rows with :func:`record_failures`)."""
    rows = [_failure_row(row) for row in rows]
    if not rows:
        return 0
    table = pa.Table.from_pylist(rows, schema=failure_schema())
    atomic_write_table(table, Path(root) / FAILURES_DIR / f"{tag}.parquet")
    return len(rows)


def _failure_row(row: dict) -> dict:
    values = {}
    for field in failure_schema():
        value = row.get(field.name)
        if value is not None and field.name != "attempts":
            value = str(value)
        values[field.name] = value
    return values


def record_failures(
    root: str | os.PathLike,
    modality: str,
    rows: Iterable[dict],
    resolved: Iterable[str] = (),
    now: str | None = None,
) -> int:
    """Make ``_failures/`` hold the current failures after a run of ``modality``.

    ``rows``: this run's failures of the modality (video_id, path, stage, error, reason);
    ``resolved``: its videos that have features now (their old failures go). Every other
    modality's rows stay. One row per (video_id, modality, stage): the latest failure, with
    ``attempts`` counting the runs that failed the video at that stage. A run's outcome for
    a video replaces the video's earlier rows of the modality at other stages (a video found
    now but undecodable is no longer ``not_found``). Written as one atomic file; the files
    of earlier runs (format 1, one per run) are merged in and then removed. Returns the
    number of current failures of ``modality``.
    """
    import datetime

    directory = Path(root) / FAILURES_DIR
    now = now or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    old_files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    current = {_failure_key(row): row for row in _current_failures(old_files)}
    rows = [_failure_row({**row, "modality": modality, "time": now}) for row in rows]
    for row in rows:
        row["reason"] = row["reason"] or "error"
    _add_run(current, rows, {(video_id, modality) for video_id in resolved})
    target = directory / CURRENT_FAILURES
    if current or target.exists():
        ordered = [current[key] for key in sorted(current)]
        atomic_write_table(pa.Table.from_pylist(ordered, schema=failure_schema()), target)
    for path in old_files:
        if path != target:
            path.unlink(missing_ok=True)
    return sum(1 for key in current if key[1] == modality)


def _failure_key(row: dict) -> tuple[str, str, str]:
    return (row["video_id"], row["modality"], row["stage"] or "")


def _add_run(current: dict, rows: list[dict], resolved: set = frozenset()) -> None:
    """One run's failure rows into ``current`` (keyed by _failure_key): each replaces its
    video's rows of the modality, ``attempts`` going on at the same stage; ``resolved``
    (video_id, modality) pairs lose theirs."""
    videos = resolved | {(row["video_id"], row["modality"]) for row in rows}
    previous = {key: current.pop(key) for key in list(current) if key[:2] in videos}
    for row in rows:
        key = _failure_key(row)
        earlier = previous[key]["attempts"] if key in previous else 0
        current[key] = {**row, "attempts": earlier + 1}


def _current_failures(files: list[Path]) -> list[dict]:
    """Rows of failure files of any format, one per (video_id, modality, stage). A format-1
    file (``<modality>-<run>.parquet``, no attempts) is one run, oldest first; the current
    file (format 2) is read as it stands, last."""
    merged: dict[tuple, dict] = {}
    for path in sorted(
        files, key=lambda path: (path.name == CURRENT_FAILURES, path.stat().st_mtime)
    ):
        modality = path.stem.split("-")[0]  # format 1: <modality>-<run>.parquet
        rows = []
        for row in pq.read_table(path).to_pylist():
            row = _failure_row({"modality": modality, **row})
            row["modality"] = row["modality"] or modality
            row["reason"] = row["reason"] or "error"
            row["time"] = row["time"] or _mtime(path)
            rows.append(row)
        if path.name == CURRENT_FAILURES:
            merged.update((_failure_key(row), row) for row in rows)
        else:
            _add_run(merged, [row for row in rows if row["attempts"] is None])
            merged.update((_failure_key(row), row) for row in rows if row["attempts"] is not None)
    return list(merged.values())


def _mtime(path: Path) -> str:
    import datetime

    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    return stamp.isoformat(timespec="seconds")


def read_failures(root: str | os.PathLike) -> pa.Table:
    """The current failures (format 2 columns; format-1 files merged to one row per video,
    modality and stage)."""
    directory = Path(root) / FAILURES_DIR
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return failure_schema().empty_table()
    return pa.Table.from_pylist(_current_failures(files), schema=failure_schema())
