"""The feature-store contract of DESIGN.md: every stage relies on it exactly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import store


def _metadata(task="single_label", text_dim=384):
    return {
        "name": "tiny",
        "task": task,
        "class_names": ["a", "b", "c"],
        "modalities": {
            "visual": {"dim": 1024, "extractor": "s3d", "weights": "random", "config": {}},
            "text": {"dim": text_dim, "extractor": "text", "weights": "default", "config": {}},
        },
    }


def _rows(count, task="single_label", start=0):
    rng = np.random.default_rng(start)
    rows = []
    for index in range(start, start + count):
        row = {
            "video_id": f"video{index}",
            "split": ("train", "val", "test")[index % 3],
            "visual": rng.standard_normal((1 + index % 3, 1024)).astype(np.float32).tolist(),
            "text": rng.standard_normal((2, 384)).astype(np.float32).tolist()
            if index % 2
            else None,
            "audio": None,
        }
        if task == "single_label":
            row["label"] = index % 3
        else:
            row["labels"] = [index % 3, (index + 1) % 3]
        rows.append(row)
    return rows


def _write_store(root, task="single_label", files=2, per_file=4):
    store.write_dataset_json(root, _metadata(task))
    for number in range(files):
        table = pa.Table.from_pylist(
            _rows(per_file, task, start=number * per_file), schema=store.store_schema(task)
        )
        store.atomic_write_table(table, root / f"part-{number}.parquet")


@pytest.mark.parametrize("task", store.TASKS)
def test_schema_has_contract_columns_and_types(task):
    schema = store.store_schema(task)
    label = "label" if task == "single_label" else "labels"
    assert schema.names == ["video_id", "split", label, "visual", "text", "audio"]
    assert schema.field("video_id").type == pa.string()
    assert schema.field("split").type == pa.string()
    expected_label = pa.int32() if task == "single_label" else pa.list_(pa.int32())
    assert schema.field(label).type == expected_label
    for modality in ("visual", "text", "audio"):
        assert schema.field(modality).type == pa.list_(pa.list_(pa.float32()))


@pytest.mark.parametrize("task", store.TASKS)
def test_valid_store_round_trips(tmp_path, task):
    _write_store(tmp_path, task)
    metadata = store.validate_store(tmp_path)
    assert metadata["task"] == task
    table = store.read_store(tmp_path)
    assert table.num_rows == 8
    assert len(set(table.column("video_id").to_pylist())) == 8
    first = table.slice(0, 1).to_pylist()[0]
    assert store.sequence_to_numpy(first["visual"], 1024).shape[1] == 1024


def test_readers_select_parquet_by_extension_and_skip_private_dirs(tmp_path):
    _write_store(tmp_path)
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "_parts").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "_parts" / "stray.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / ".hidden.parquet")
    store.write_failures(
        tmp_path, [{"video_id": "v", "path": "p", "stage": "decode", "error": "e"}], "t"
    )
    files = store.list_parquet_files(tmp_path)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-0.parquet", "part-1.parquet"]
    store.validate_store(tmp_path)
    assert store.read_failures(tmp_path).num_rows == 1


def test_nested_files_from_other_writers_are_accepted(tmp_path):
    store.write_dataset_json(tmp_path, _metadata())
    nested = tmp_path / "split=train"
    nested.mkdir()
    pq.write_table(
        pa.Table.from_pylist(_rows(3), schema=store.store_schema("single_label")),
        nested / "data.parquet",
    )
    assert store.read_store(tmp_path).num_rows == 3


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda rows: rows.__setitem__(1, {**rows[1], "video_id": rows[0]["video_id"]}),
            "duplicate",
        ),
        (lambda rows: rows.__setitem__(0, {**rows[0], "split": "validate"}), "split"),
        (lambda rows: rows.__setitem__(0, {**rows[0], "label": 7}), "out of range"),
        (lambda rows: rows.__setitem__(0, {**rows[0], "visual": [[0.0] * 10]}), "dim"),
    ],
)
def test_contract_violations_are_reported(tmp_path, corrupt, message):
    store.write_dataset_json(tmp_path, _metadata())
    rows = _rows(4)
    corrupt(rows)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=store.store_schema("single_label")),
        tmp_path / "x.parquet",
    )
    with pytest.raises(store.StoreError, match=message):
        store.validate_store(tmp_path)


def test_dataset_json_is_checked(tmp_path):
    with pytest.raises(store.StoreError, match="no dataset.json"):
        store.read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(store.StoreError, match="malformed"):
        store.read_dataset_json(tmp_path)
    bad = _metadata()
    bad["modalities"]["audio"] = {"dim": 64, "extractor": "vggish", "weights": "r", "config": {}}
    (tmp_path / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(store.StoreError, match="audio"):
        store.read_dataset_json(tmp_path)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    table = pa.table({"x": [1, 2, 3]})

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(OSError):
        store.atomic_write_table(table, tmp_path / "a.parquet")
    assert list(tmp_path.iterdir()) == []
