"""Every use of Ray's private APIs, in one place, behind a check of ``ray.__version__``.

    recorder = placement_group_recorder("trials/t1/placement_groups.txt")  # a Train callback
    release_placement_groups(["<hex id>", ...])                          # -> how many removed

Why: Ray 2.60 leaves a stopped Tune trial's Train worker placement group to a detached
cleaner that needs the state API; without a dashboard the group holds its CPUs until the
driver exits (see :class:`pipeline.tune.sweep.ReleaseWorkerGroups`). The workaround needs
three things that Ray does not publish: the Train V2 worker-group callback base
(``ray.train.v2._internal...WorkerGroupCallback``), the worker group's placement-group handle
(``get_worker_group_state().placement_group_handle``) and a ``PlacementGroup`` built from a
hex id (``ray._raylet.PlacementGroupID``).

Known good: Ray 2.60.x (the version ``pyproject.toml`` pins). On any other version these
helpers raise :class:`RayCompatibilityError`, which says what to check; setting
``CRIF_ALLOW_UNTESTED_RAY=1`` tries the same private APIs anyway, with a warning, for someone
who is testing a Ray upgrade. Nothing here is imported from Ray before it is used.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

__all__ = [
    "ALLOW_UNTESTED_ENV",
    "KNOWN_GOOD",
    "RayCompatibilityError",
    "check_ray_version",
    "placement_group_recorder",
    "release_placement_groups",
]

KNOWN_GOOD = ((2, 60),)  # (major, minor) of the Ray releases these workarounds were tested on
ALLOW_UNTESTED_ENV = "CRIF_ALLOW_UNTESTED_RAY"


class RayCompatibilityError(RuntimeError):
    """The installed Ray is not one whose private APIs this project was tested against."""


def _release(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def check_ray_version(feature: str, version: str | None = None) -> None:
    """Raise :class:`RayCompatibilityError` unless Ray ``version`` (default: installed) is
    known good for ``feature``; with ``CRIF_ALLOW_UNTESTED_RAY=1`` warn instead."""
    if version is None:
        import ray

        version = ray.__version__
    if _release(version) in KNOWN_GOOD:
        return
    known = ", ".join(f"{major}.{minor}.x" for major, minor in KNOWN_GOOD)
    message = (
        f"{feature} uses private Ray APIs tested on Ray {known}, but Ray {version} is "
        f"installed. Install a tested Ray (pyproject.toml), or check pipeline/common/"
        f"ray_compat.py against this version and set {ALLOW_UNTESTED_ENV}=1 to try it."
    )
    if os.environ.get(ALLOW_UNTESTED_ENV) == "1":
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return
    raise RayCompatibilityError(message)


def _worker_group_callback_base() -> type:
    check_ray_version("The sweep's placement-group recorder")
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    return WorkerGroupCallback


_RECORDER: type | None = None


def _recorder_class() -> type:
    """The recorder class, built on first use (its base is private to Ray Train V2)."""
    global _RECORDER
    if _RECORDER is None:

        class PlacementGroupRecorder(_worker_group_callback_base()):
            """Train side (on the controller): note each worker group's placement group."""

            def __init__(self, path: str):
                self.path = path

            def after_worker_group_start(self, worker_group) -> None:
                state = worker_group.get_worker_group_state()
                group = state.placement_group_handle.placement_group
                with open(self.path, "a") as handle:
                    handle.write(group.id.hex() + "\n")

        PlacementGroupRecorder.__qualname__ = "PlacementGroupRecorder"
        _RECORDER = PlacementGroupRecorder
    return _RECORDER


def __getattr__(name: str):
    # The callback is pickled by reference to the Train controller; unpickling looks up
    # ``pipeline.common.ray_compat.PlacementGroupRecorder``, which builds the class there too.
    if name == "PlacementGroupRecorder":
        return _recorder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def placement_group_recorder(path: str | os.PathLike):
    """A Train V2 callback (``RunConfig(callbacks=[...])``) that appends the hex id of each
    worker group's placement group to ``path``, one a line, when the group starts."""
    return _recorder_class()(str(path))


def release_placement_groups(group_ids: Iterable[str]) -> int:
    """Remove the placement groups (hex ids) that still exist; returns how many were."""
    check_ray_version("Releasing recorded placement groups")
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for group_id in group_ids:
        group = PlacementGroup(PlacementGroupID.from_hex(group_id))
        if ray.util.placement_group_table(group).get("state", "REMOVED") != "REMOVED":
            remove_placement_group(group)
            removed += 1
    return removed
