"""The one atomic writer: whole files or nothing, for bytes, text, JSON and Parquet."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import store
from pipeline.common import atomic


def test_store_reexports_the_common_writers():
    assert store.atomic_write_bytes is atomic.atomic_write_bytes
    assert store.atomic_write_table is atomic.atomic_write_table


def test_each_kind_lands_whole_and_replaces(tmp_path):
    atomic.atomic_write_bytes(tmp_path / "deep" / "a.bin", b"\x00\x01")
    assert (tmp_path / "deep" / "a.bin").read_bytes() == b"\x00\x01"
    atomic.atomic_write_text(tmp_path / "a.md", "± old")
    atomic.atomic_write_text(tmp_path / "a.md", "± new")
    assert (tmp_path / "a.md").read_text(encoding="utf-8") == "± new"
    atomic.atomic_write_json(tmp_path / "a.json", {"when": tmp_path}, default=str)
    assert json.loads((tmp_path / "a.json").read_text()) == {"when": str(tmp_path)}
    assert (tmp_path / "a.json").read_text().startswith('{\n  "when"')  # indent=2
    atomic.atomic_write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    assert pq.read_table(tmp_path / "a.parquet").column("x").to_pylist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json", "a.md", "a.parquet", "deep",
    ]  # fmt: skip


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    atomic.atomic_write_text(tmp_path / "a.json", "old")

    def explode(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(tmp_path / "a.json", explode)
    with pytest.raises(TypeError):
        atomic.atomic_write_json(tmp_path / "a.json", {"x": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"


def test_temporary_name_is_hidden_and_not_parquet(tmp_path):
    temporary = atomic.temporary_sibling(tmp_path / "part-0.parquet")
    assert temporary.parent == tmp_path and temporary.name.startswith(".part-0.parquet.tmp-")
    assert not temporary.name.endswith(".parquet")
