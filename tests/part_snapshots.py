"""Snapshots of a job's atomic Parquet parts, to check what a rerun after a kill redid."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def part_ids(directory: Path, pattern: str) -> dict[str, frozenset[str]]:
    """{part file name: the video ids it holds} for every finished part under ``directory``."""
    return {
        str(path.relative_to(directory)): frozenset(
            pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist()
        )
        for path in sorted(directory.glob(pattern))
    }


def assert_rerun_skipped(before: dict[str, frozenset[str]], after: dict[str, frozenset[str]]):
    """The parts of the killed run survive as they were and no new part redoes their videos."""
    assert before, "the killed run finished no part"
    for name, ids in before.items():
        assert after.get(name) == ids, f"{name} of the killed run was rewritten or lost"
    finished = frozenset().union(*before.values())
    redone = frozenset().union(*(ids for name, ids in after.items() if name not in before))
    assert not finished & redone, f"the rerun redid {sorted(finished & redone)}"
    return finished
