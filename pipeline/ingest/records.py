"""Manifest records: one listed video (:class:`ManifestRow`), a dataset's rows (:class:`Manifest`).

The shared vocabulary of :mod:`pipeline.ingest.sources` (folders, lists, archives) and
:mod:`pipeline.ingest.manifest` (dataset annotations); both import it, neither imports the other
for it, so there is no import cycle between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["Manifest", "ManifestError", "ManifestRow", "manifest_schema"]


class ManifestError(ValueError):
    """Bad dataset input; the message names the file and the entry at fault."""


@dataclass(frozen=True)
class ManifestRow:
    """One listed video; ``path`` is None when its file was not found."""

    video_id: str
    path: str | None
    split: str  # "train" | "val" | "test" | "unlabeled"
    label: int | None
    labels: tuple[int, ...] = ()  # every label of the video, for multi-label tasks
    captions: tuple[str, ...] = ()
    segments: tuple[tuple[float, float], ...] = ()  # (start, end) seconds per caption
    duration: float | None = None


def manifest_schema() -> pa.Schema:
    """The Arrow schema of :meth:`Manifest.to_table`."""
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("path", pa.string()),
            ("split", pa.string()),
            ("label", pa.int32()),
            ("labels", pa.list_(pa.int32())),
            ("captions", pa.list_(pa.string())),
            ("segments", pa.list_(pa.list_(pa.float64()))),
            ("duration", pa.float64()),
        ]
    )


@dataclass
class Manifest:
    """Rows of one dataset plus what could not be matched (reported, never silently dropped)."""

    name: str
    task: str  # "single_label" | "multi_label"
    class_names: list[str]
    rows: list[ManifestRow]
    missing: list[str] = field(default_factory=list)  # listed video ids with no file found
    unknown: list[str] = field(default_factory=list)  # ids without ground truth (excluded)
    skipped: int = 0  # non-video entries of a folder, list or archive

    def split_counts(self, limit: int | None = None) -> dict[str, int]:
        """Videos per split (of the first ``limit`` rows): train, val, test, then any other."""
        rows = self.rows[:limit] if limit else self.rows
        counts = {name: 0 for name in ("train", "val", "test")}
        for row in rows:
            counts[row.split] = counts.get(row.split, 0) + 1
        return counts

    def found(self) -> list[ManifestRow]:
        """Rows whose file exists."""
        return [row for row in self.rows if row.path is not None]

    def to_table(self) -> pa.Table:
        """All rows as an Arrow table; name, task and class names travel in the metadata."""
        columns = {
            "video_id": [row.video_id for row in self.rows],
            "path": [row.path for row in self.rows],
            "split": [row.split for row in self.rows],
            "label": [row.label for row in self.rows],
            "labels": [list(row.labels) for row in self.rows],
            "captions": [list(row.captions) for row in self.rows],
            "segments": [[list(segment) for segment in row.segments] for row in self.rows],
            "duration": [row.duration for row in self.rows],
        }
        metadata = {"name": self.name, "task": self.task, "class_names": self.class_names}
        schema = manifest_schema().with_metadata({"manifest": json.dumps(metadata)})
        return pa.table(columns, schema=schema)
