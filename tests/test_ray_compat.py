"""The version-guarded Ray workarounds (pipeline/common/ray_compat.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.cloudpickle as cloudpickle

from pipeline.common import ray_compat

REPO = Path(__file__).resolve().parents[1]


def test_the_installed_ray_is_known_good():
    ray_compat.check_ray_version("this test")  # the pinned Ray: no error


@pytest.mark.parametrize("version", ["2.60.0", "2.60.7rc1"])
def test_known_good_releases_pass(version):
    ray_compat.check_ray_version("x", version)


@pytest.mark.parametrize("version", ["2.61.0", "3.0.0", "2.6.0", "nightly"])
def test_other_versions_are_a_clear_error_unless_allowed(version, monkeypatch):
    monkeypatch.delenv(ray_compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(ray_compat.RayCompatibilityError, match=f"Ray {version} is installed"):
        ray_compat.check_ray_version("The recorder", version)
    monkeypatch.setenv(ray_compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(RuntimeWarning, match="tested on Ray 2.60.x"):
        ray_compat.check_ray_version("The recorder", version)


def test_helpers_check_the_installed_version(monkeypatch):
    import ray

    monkeypatch.delenv(ray_compat.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(ray, "__version__", "2.99.0")
    monkeypatch.setattr(ray_compat, "_RECORDER", None)
    with pytest.raises(ray_compat.RayCompatibilityError):
        ray_compat.placement_group_recorder("groups.txt")
    with pytest.raises(ray_compat.RayCompatibilityError):
        ray_compat.release_placement_groups([])


def test_recorder_writes_each_group_and_pickles_by_reference(tmp_path):
    from ray.train.v2._internal.execution.callback import WorkerGroupCallback

    path = tmp_path / "placement_groups.txt"
    recorder = ray_compat.placement_group_recorder(path)
    assert isinstance(recorder, WorkerGroupCallback)
    for hex_id in ("ab01", "cd02"):
        group = SimpleNamespace(id=SimpleNamespace(hex=lambda hex_id=hex_id: hex_id))
        handle = SimpleNamespace(placement_group=group)
        state = SimpleNamespace(placement_group_handle=handle)
        recorder.after_worker_group_start(SimpleNamespace(get_worker_group_state=lambda s=state: s))
    assert path.read_text() == "ab01\ncd02\n"
    # The Train controller unpickles it in a fresh process, where the class is built on lookup.
    payload = cloudpickle.dumps(recorder)
    assert b"PlacementGroupRecorder" in payload and b"after_worker_group_start" not in payload
    script = "import sys, pickle; print(pickle.loads(sys.stdin.buffer.read()).path)"
    result = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, cwd=REPO,
        env={"PYTHONPATH": str(REPO)}, check=True,
    )  # fmt: skip
    assert result.stdout.decode().strip() == str(path)


def test_release_removes_live_groups_only(ray_session):
    from ray.util.placement_group import placement_group, placement_group_table

    group = placement_group([{"CPU": 0.25}])
    ray_session.get(group.ready(), timeout=120)
    assert ray_compat.release_placement_groups([group.id.hex()]) == 1
    assert placement_group_table(group)["state"] == "REMOVED"
    assert ray_compat.release_placement_groups([group.id.hex()]) == 0
