"""Feeding stores to Ray Train: split selection, the val hold-out, padding and masks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import store
from pipeline.train.data import (
    PaddedBatchCollate,
    build_datasets,
    inspect_store,
    pad_sequences,
    read_datasets,
    select_split,
    store_bytes,
)

SEQUENCE = pa.list_(pa.list_(pa.float32()))


def _metadata(task="single_label", text_dim=4):
    return {
        "name": "tiny",
        "task": task,
        "class_names": ["a", "b", "c"],
        "modalities": {
            "visual": {"dim": 1024, "extractor": "s3d", "weights": "random", "config": {}},
            "text": {"dim": text_dim, "extractor": "text", "weights": "random", "config": {}},
        },
    }


def _rows(count, splits=("train", "val", "test"), start=0, text=True):
    rows = []
    for index in range(start, start + count):
        rows.append(
            {
                "video_id": f"v{index}",
                "split": splits[index % len(splits)],
                "label": index % 3,
                "visual": np.full((1 + index % 3, 1024), index, np.float32).tolist(),
                "text": np.full((2, 4), index, np.float32).tolist() if text and index % 2 else None,
                "audio": None,
            }
        )
    return rows


def test_pad_sequences_masks_nulls_and_keeps_order():
    column = pa.array([[[1.0, 2.0]], None, [[3.0, 4.0], [5.0, 6.0]]], type=SEQUENCE)
    values, mask = pad_sequences(column, width=2)
    assert values.shape == (3, 2, 2) and mask.dtype == torch.bool
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    assert values[2].tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert values[1].abs().sum() == 0 and values[0, 1].abs().sum() == 0


def test_pad_sequences_subsamples_long_sequences_uniformly():
    column = pa.array([[[float(step)] for step in range(10)], [[7.0]]], type=SEQUENCE)
    values, mask = pad_sequences(column, width=1, max_length=4)
    assert values.shape == (2, 4, 1)
    assert values[0, :, 0].tolist() == [0.0, 3.0, 6.0, 9.0]  # first and last kept
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]


def test_pad_sequences_rejects_a_wrong_width():
    with pytest.raises(store.StoreError):
        pad_sequences(pa.array([[[1.0, 2.0, 3.0]]], type=SEQUENCE), width=2)


def test_collate_single_and_multi_label():
    table = pa.table(
        {
            "visual": pa.array([[[0.0] * 3], [[1.0] * 3, [2.0] * 3]], type=SEQUENCE),
            "semantic": pa.array([None, [[1.0, 1.0]]], type=SEQUENCE),
            "label": pa.array([2, 0], pa.int32()),
            "labels": pa.array([[0, 2], []], pa.list_(pa.int32())),
        }
    )
    single = PaddedBatchCollate(task="single_label", num_classes=3, visual_dim=3, semantic_dim=2)
    batch = single(table)
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [2, 0]
    assert batch["semantic_mask"].any(dim=1).tolist() == [False, True]
    assert batch["visual_mask"].sum(dim=1).tolist() == [1, 2]
    multi = PaddedBatchCollate(task="multi_label", num_classes=3, visual_dim=3)
    batch = multi(table)
    assert batch["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    assert "semantic" not in batch  # semantic_dim 0: visual-only batches


def test_holdout_is_deterministic_and_independent_of_row_order():
    table = pa.Table.from_pylist(
        _rows(200, splits=("train",)), schema=store.store_schema("single_label")
    )
    kwargs = dict(val_fraction=0.1, label_column="label", semantic=None)
    val = select_split(table, split="val", **kwargs)
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    again = select_split(shuffled, split="val", **kwargs)
    assert sorted(val.column("video_id").to_pylist()) == sorted(
        again.column("video_id").to_pylist()
    )
    assert 0 < val.num_rows < 200 * 0.1 * 2
    train = select_split(table, split="train", **kwargs)
    assert train.num_rows + val.num_rows == 200
    larger = select_split(table, split="val", **{**kwargs, "val_fraction": 0.3})
    assert set(val.column("video_id").to_pylist()) < set(larger.column("video_id").to_pylist())


def test_no_val_split_means_no_hold_out_unless_asked(tmp_path):
    """The paper's MSR-VTT split (train and test only) trains on every train video; a
    hold-out is val_fraction's, counted in the split sizes; a store's own val refuses one."""
    store.write_dataset_json(tmp_path, _metadata())
    schema = store.store_schema("single_label")
    rows = _rows(100, splits=("train", "train", "test", "train"))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "part-0.parquet")
    plain = inspect_store(tmp_path, None)
    assert plain.split_counts == {"train": 75, "val": 0, "test": 25}
    assert plain.val_fraction == 0.0 and not plain.holdout
    table = pq.read_table(tmp_path / "part-0.parquet")
    train = select_split(table, split="train", label_column="label", semantic=None)
    assert train.num_rows == 75  # all of them
    held = inspect_store(tmp_path, None, val_fraction=0.2)
    assert held.holdout and held.stored_counts == {"train": 75, "test": 25}
    val = select_split(table, split="val", label_column="label", semantic=None, val_fraction=0.2)
    assert held.split_counts == {"train": 75 - val.num_rows, "val": val.num_rows, "test": 25}
    assert 0 < val.num_rows < 75 and set(val.column("video_id").to_pylist()) <= {
        row["video_id"] for row in rows if row["split"] == "train"
    }
    assert store.split_sizes(held.split_counts) == (
        f"split sizes: train {75 - val.num_rows}, val {val.num_rows}, test 25"
    )
    with_val = tmp_path / "with-val"
    store.write_dataset_json(with_val, _metadata())
    pq.write_table(pa.Table.from_pylist(_rows(9), schema=schema), with_val / "part-0.parquet")
    with pytest.raises(ValueError, match="has a val split"):
        inspect_store(with_val, None, val_fraction=0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        inspect_store(tmp_path, None, val_fraction=1.0)


def test_select_split_drops_rows_without_visual_and_adds_missing_semantic():
    rows = _rows(6, splits=("train",))
    rows[0]["visual"] = None
    table = pa.Table.from_pylist(rows, schema=store.store_schema("single_label")).drop_columns(
        ["text"]
    )
    out = select_split(table, split="train", label_column="label", semantic="text")
    assert out.num_rows == 5 and out.column_names == ["video_id", "label", "visual", "semantic"]
    assert out.column("semantic").null_count == 5


def test_inspect_store_counts_splits_and_skips_private_directories(tmp_path):
    store.write_dataset_json(tmp_path, _metadata())
    schema = store.store_schema("single_label")
    store.atomic_write_table(pa.Table.from_pylist(_rows(6), schema=schema), tmp_path / "a.parquet")
    nested = tmp_path / "more" / "b.parquet"
    store.atomic_write_table(
        pa.Table.from_pylist(_rows(3, start=6), schema=schema).drop_columns(["text"]), nested
    )
    store.atomic_write_table(
        pa.Table.from_pylist(_rows(3, start=9), schema=schema), tmp_path / "_failures" / "x.parquet"
    )
    splits = inspect_store(tmp_path, "text")
    assert splits.split_counts == {"train": 3, "val": 3, "test": 3}
    assert not splits.holdout and splits.files_without_semantic == (str(nested),)
    assert (splits.num_classes, splits.semantic_dim, splits.visual_dim) == (3, 4, 1024)
    with pytest.raises(store.StoreError, match="audio"):
        inspect_store(tmp_path, "audio")


def test_build_datasets_reads_every_file_and_row_order(tmp_path, ray_session):
    store.write_dataset_json(tmp_path, _metadata())
    schema = store.store_schema("single_label")
    for number in range(3):
        rows = _rows(5, start=5 * number)[::-1]  # any row order
        table = pa.Table.from_pylist(rows, schema=schema)
        if number == 2:
            table = table.drop_columns(["text"]).append_column("extra", pa.array(["x"] * 5))
        pq.write_table(table, tmp_path / f"part-{number}.parquet")
    datasets = build_datasets(inspect_store(tmp_path, "text"))
    ids = {name: sorted(ds.to_pandas()["video_id"]) for name, ds in datasets.items()}
    assert sum(len(v) for v in ids.values()) == 15
    assert ids["val"] == sorted(f"v{i}" for i in range(15) if i % 3 == 1)
    collate = PaddedBatchCollate(
        task="single_label", num_classes=3, visual_dim=1024, semantic_dim=4
    )
    batches = list(datasets["train"].iter_torch_batches(batch_size=8, collate_fn=collate))
    has_text = torch.cat([b["semantic_mask"].any(dim=1) for b in batches])
    assert has_text.sum() == sum(1 for i in range(10) if i % 3 == 0 and i % 2)


def test_read_datasets_materializes_small_stores_only(tmp_path, ray_session):
    import math

    from ray.data.dataset import MaterializedDataset

    store.write_dataset_json(tmp_path, _metadata())
    table = pa.Table.from_pylist(_rows(6), schema=store.store_schema("single_label"))
    pq.write_table(table, tmp_path / "part-0.parquet")
    splits = inspect_store(tmp_path, "text")
    size = (tmp_path / "part-0.parquet").stat().st_size
    assert store_bytes(list(splits.files)) == size
    assert store_bytes([str(tmp_path / "missing.parquet")]) in (None, 0)
    small = read_datasets(splits, materialize_below_mb=1)
    assert all(isinstance(d, MaterializedDataset) for d in small.values())
    for limit in (0, size / 2**20):  # 0: always stream; a store at the limit is not "below"
        streamed = read_datasets(splits, materialize_below_mb=limit)
        assert not any(isinstance(d, MaterializedDataset) for d in streamed.values())
    forced = read_datasets(splits, materialize_below_mb=math.inf)
    assert {n: d.count() for n, d in forced.items()} == {n: d.count() for n, d in small.items()}
