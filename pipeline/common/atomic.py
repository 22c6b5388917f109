"""Atomic file writes: the final name only ever holds a whole file.

    atomic_write_bytes(path, data)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_json(out / "metrics.json", document)            # indent=2
    atomic_write_table(table, store / "part-0.parquet")          # Parquet, zstd

Every writer goes through one implementation, :func:`atomic_write`: the content is written
to a hidden sibling (``.NAME.tmp-<uuid>``, no ``.parquet`` suffix, so no store reader ever
lists it), fsynced, then renamed over ``path`` with ``os.replace``. A crash or an exception
leaves either the old file or the new one, never half of one, and removes the temporary.
Readers of the feature store and of run directories rely on this (DESIGN.md).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_table",
    "atomic_write_text",
    "temporary_sibling",
]


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` that no reader picks up (no ``.parquet`` suffix)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary)`` to fill a hidden sibling, fsync it, rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the final name only ever holds a whole file."""
    atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, document: Any, **dumps_options: Any) -> None:
    """``document`` as indented JSON (``json.dumps`` options, e.g. ``default=str``), atomically."""
    dumps_options.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(document, **dumps_options))


def atomic_write_table(table, path: str | os.PathLike) -> None:
    """Write a pyarrow Table as a Parquet file (zstd) atomically."""
    import pyarrow.parquet as pq  # looked up at call time: tests replace write_table

    atomic_write(path, lambda temporary: pq.write_table(table, temporary, compression="zstd"))
