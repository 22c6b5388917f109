"""Feeding a feature store to Ray Train: split selection, padding and masks.

Any store that follows the contract of DESIGN.md works: any number of ``*.parquet`` files
(found by :func:`pipeline.store.list_parquet_files`), any row order, extra columns, files
that lack the semantic column altogether, and null cells.

- ``inspect_store`` reads ``dataset.json`` and only the ``split`` column of every file
  (cheap), so the job knows the split sizes before Ray Data runs anything.
- ``build_datasets`` returns one Ray Dataset per split ("train", "val", "test"). A store
  without ``val`` rows trains on all its ``train`` rows and has no val metric, unless the run
  asks for a hold-out: ``val_fraction`` of ``train`` (by a CRC32 of ``video_id``, independent
  of file layout and row order) becomes ``val``. It is never silent: the split sizes are
  logged, and a store that has a val split refuses a ``val_fraction``.
- ``read_datasets`` is ``build_datasets`` read into the object store once
  (``Dataset.materialize``) when the store is small: every epoch then iterates blocks in
  memory instead of re-running the Parquet reads, whose task start-up dominates small runs.
- ``PaddedBatchCollate`` turns an Arrow batch into padded tensors and boolean masks:
  ``visual`` (B, T, D) + ``visual_mask`` (B, T), ``semantic`` (B, N, D_s) + ``semantic_mask``
  (B, N), ``labels`` (B,) int64 or (B, C) multi-hot float32. A null semantic cell becomes an
  all-False mask row, so the semantic loss terms can leave that row out.

Rows without visual features or without a label can neither train nor be scored; they are
dropped here, and the training loop records how many rows each split really had.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from pipeline.store import StoreError, list_parquet_files, read_dataset_json

__all__ = [
    "PaddedBatchCollate",
    "StoreSplits",
    "build_datasets",
    "holdout_mask",
    "inspect_store",
    "pad_sequences",
    "read_datasets",
    "select_split",
    "store_bytes",
]

HOLDOUT_SCALE = 2**32  # CRC32 range: a video is held out when crc32 < fraction * scale


@dataclass(frozen=True)
class StoreSplits:
    """What the training job needs to know about a store before reading its features."""

    root: str
    metadata: dict[str, Any]
    files: tuple[str, ...]
    split_counts: dict[str, int]  # rows per split as trained (after the val hold-out)
    semantic: str | None
    files_without_semantic: tuple[str, ...] = field(default=())
    val_fraction: float = 0.0  # of the train videos held out as val (stores without val)
    stored_counts: dict[str, int] = field(default_factory=dict)  # rows per split in the files

    @property
    def holdout(self) -> bool:
        """Whether val is held out of train (``val_fraction`` > 0)."""
        return self.val_fraction > 0

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def label_column(self) -> str:
        return "label" if self.task == "single_label" else "labels"

    @property
    def num_classes(self) -> int:
        return len(self.metadata["class_names"])

    @property
    def visual_dim(self) -> int:
        return int(self.metadata["modalities"]["visual"]["dim"])

    @property
    def semantic_dim(self) -> int:
        if self.semantic is None:
            return 0
        return int(self.metadata["modalities"][self.semantic]["dim"])


def inspect_store(root: str | Path, semantic: str | None, val_fraction: float = 0.0) -> StoreSplits:
    """Metadata, files and split sizes of a store; ``semantic`` None trains visual-only.

    ``val_fraction`` > 0 holds that fraction of the train videos out as val; only for a store
    without val rows (one that has them is refused: its val split is the one to use)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    metadata = read_dataset_json(root)
    if "visual" not in metadata["modalities"]:
        raise StoreError(f"{root}: dataset.json declares no visual modality")
    if semantic is not None and semantic not in metadata["modalities"]:
        raise StoreError(
            f"{root}: semantic modality {semantic!r} is not in dataset.json "
            f"(has {sorted(metadata['modalities'])})"
        )
    files = list_parquet_files(root)
    if not files:
        raise StoreError(f"{root}: no .parquet files")
    stored: Counter[str] = Counter()
    held = 0
    missing = []
    for path in files:
        names = pq.read_schema(path).names
        for column in ("video_id", "split", "visual"):
            if column not in names:
                raise StoreError(f"{path}: missing column {column!r}")
        if semantic is not None and semantic not in names:
            missing.append(path)
        table = pq.read_table(path, columns=["video_id", "split"] if val_fraction else ["split"])
        splits = table.column("split").to_pylist()
        stored.update(splits)
        if val_fraction:
            train = np.asarray(splits, dtype=object) == "train"
            held += int((holdout_mask(table.column("video_id"), val_fraction) & train).sum())
    if stored["train"] == 0:
        raise StoreError(f"{root}: no rows with split 'train'")
    if val_fraction and stored["val"]:
        raise ValueError(
            f"{root} has a val split ({stored['val']} rows): val_fraction (a hold-out of train "
            "videos) is for stores without one; leave it at 0 to use the store's val split"
        )
    counts = {name: stored[name] for name in ("train", "val", "test")}
    counts.update(train=counts["train"] - held, val=counts["val"] + held)
    return StoreSplits(
        root=str(root),
        metadata=metadata,
        files=tuple(files),
        split_counts=counts,
        semantic=semantic,
        files_without_semantic=tuple(missing),
        val_fraction=float(val_fraction),
        stored_counts=dict(stored),
    )


def holdout_mask(video_ids: pa.Array | pa.ChunkedArray, val_fraction: float) -> np.ndarray:
    """The videos held out as val: ``crc32(video_id) < val_fraction * 2**32``, for any layout."""
    # CRC32 is stable across processes and Python versions (unlike hash()).
    hashes = [zlib.crc32(str(v).encode()) for v in video_ids.to_pylist()]
    return np.asarray(hashes, dtype=np.int64) < val_fraction * HOLDOUT_SCALE


def select_split(
    batch: pa.Table,
    *,
    split: str,
    label_column: str,
    semantic: str | None,
    val_fraction: float = 0.0,
) -> pa.Table:
    """Rows of ``split`` (after the val hold-out of ``val_fraction`` of train) that have
    visual features and a label."""
    stored = batch.column("split").to_numpy(zero_copy_only=False).astype(str)
    if val_fraction:
        held = holdout_mask(batch.column("video_id"), val_fraction) & (stored == "train")
        stored = np.where(held, "val", stored)
    keep = stored == split
    keep &= batch.column("visual").is_valid().to_numpy(zero_copy_only=False)
    keep &= batch.column(label_column).is_valid().to_numpy(zero_copy_only=False)
    columns = ["video_id", label_column, "visual"]
    table = batch.filter(pa.array(keep)).select(columns)
    if semantic is not None:
        if semantic in batch.column_names:
            values = batch.column(semantic).filter(pa.array(keep))
        else:  # a file without the semantic column: every cell is missing
            values = pa.nulls(table.num_rows, pa.list_(pa.list_(pa.float32())))
        table = table.append_column("semantic", values)
    return table


def build_datasets(splits: StoreSplits) -> dict[str, Any]:
    """One Ray Dataset per split with columns video_id, label(s), visual[, semantic]."""
    import ray.data

    label = splits.label_column
    wanted = ["video_id", "split", label, "visual"]
    datasets = {}
    # Files with and without the semantic column are read apart (their schemas differ).
    groups = [[f for f in splits.files if f not in splits.files_without_semantic]]
    groups.append(list(splits.files_without_semantic))
    for split in ("train", "val", "test"):
        parts = []
        for files, has_semantic in zip(groups, (True, False), strict=True):
            if not files:
                continue
            columns = wanted + ([splits.semantic] if splits.semantic and has_semantic else [])
            dataset = ray.data.read_parquet(files, partitioning=None).select_columns(columns)
            parts.append(
                dataset.map_batches(
                    select_split,
                    batch_format="pyarrow",
                    batch_size=None,
                    fn_kwargs=dict(
                        split=split,
                        val_fraction=splits.val_fraction,
                        label_column=label,
                        semantic=splits.semantic,
                    ),
                )
            )
        datasets[split] = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return datasets


def store_bytes(files: list[str]) -> int | None:
    """Total size of ``files`` (local paths or URIs); None when a size cannot be read."""
    import pyarrow.fs

    total = 0
    try:
        for name in files:
            uri = name if "://" in name else str(Path(name).resolve())
            filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
            total += filesystem.get_file_info(path).size or 0
    except (OSError, ValueError, pa.ArrowException):
        return None
    return total


def read_datasets(splits: StoreSplits, materialize_below_mb: float) -> dict[str, Any]:
    """``build_datasets``, materialized when the store's files total less than
    ``materialize_below_mb`` MiB (0: always streamed from the files; ``math.inf``: always
    materialized)."""
    datasets = build_datasets(splits)
    if materialize_below_mb <= 0:
        return datasets
    if not math.isinf(materialize_below_mb):
        size = store_bytes(list(splits.files))
        if size is None or size >= materialize_below_mb * 2**20:
            return datasets
    return {name: dataset.materialize() for name, dataset in datasets.items()}


# ---------------------------------------------------------------------------- collation


def pad_sequences(
    column: pa.Array | pa.ChunkedArray, width: int, max_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A list<list<float32>> column as (B, T, width) zero-padded floats and a (B, T) mask.

    Null cells become all-False mask rows. Sequences longer than ``max_length`` are
    subsampled uniformly in time (keeping the whole clip's coverage).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = column.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != int(lengths.sum()) * width:
        raise StoreError(f"a sequence cell does not have width {width}")
    rows = flat.reshape(-1, width)
    longest = int(lengths.max()) if len(lengths) else 0
    padded = np.zeros((len(lengths), max(longest, 1), width), dtype=np.float32)
    mask = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    padded[mask] = rows
    if max_length is not None and longest > max_length:
        padded, mask = _subsample(padded, mask, lengths, max_length)
    return torch.from_numpy(padded), torch.from_numpy(mask)


def _subsample(padded, mask, lengths, max_length):
    short = np.zeros((len(lengths), max_length, padded.shape[2]), dtype=np.float32)
    short_mask = np.zeros((len(lengths), max_length), dtype=bool)
    for row, length in enumerate(lengths):
        if length == 0:
            continue
        keep = min(int(length), max_length)
        index = np.linspace(0, length - 1, keep).round().astype(np.int64)
        short[row, :keep] = padded[row, index]
        short_mask[row, :keep] = True
    return short, short_mask


def _multi_hot(column: pa.Array | pa.ChunkedArray, num_classes: int) -> torch.Tensor:
    lists = column.to_pylist()
    target = torch.zeros((len(lists), num_classes), dtype=torch.float32)
    for row, labels in enumerate(lists):
        target[row, [int(v) for v in labels or []]] = 1.0
    return target


class PaddedBatchCollate(ArrowBatchCollateFn):
    """Arrow batch -> dict of tensors for ``iter_torch_batches(collate_fn=...)``.

    Returning a plain dict of tensors lets Ray Data pin the memory (``pin_memory=True``)
    and move the batch to the worker's device with non-blocking copies.
    """

    def __init__(
        self,
        *,
        task: str,
        num_classes: int,
        visual_dim: int,
        semantic_dim: int = 0,
        max_length: int | None = None,
    ):
        super().__init__()
        self.task = task
        self.num_classes = num_classes
        self.visual_dim = visual_dim
        self.semantic_dim = semantic_dim
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        visual, visual_mask = pad_sequences(batch["visual"], self.visual_dim, self.max_length)
        out = {"visual": visual, "visual_mask": visual_mask}
        if self.semantic_dim and "semantic" in batch.column_names:
            semantic, semantic_mask = pad_sequences(
                batch["semantic"], self.semantic_dim, self.max_length
            )
            out.update(semantic=semantic, semantic_mask=semantic_mask)
        if self.task == "single_label":
            labels = pc.cast(batch["label"], pa.int64()).to_numpy()
            out["labels"] = torch.from_numpy(np.array(labels, dtype=np.int64))
        else:
            out["labels"] = _multi_hot(batch["labels"], self.num_classes)
        return out
