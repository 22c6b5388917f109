"""init_ray: the cluster checks before joining, the console it gives the job."""

from __future__ import annotations

import socket

import pytest

from pipeline.common import cluster_checks, ray_utils


def _closed_port() -> int:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def fresh_ray(monkeypatch):
    """``ray`` as if no instance were running, with ``ray.init`` recording its calls."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options) or "context")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_joining_a_dead_address_fails_fast_without_ray_init(fresh_ray):
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(cluster_checks.ClusterUnreachableError, match=address):
        ray_utils.init_ray(address)
    assert fresh_ray == []


def test_ray_address_is_checked_too(fresh_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{_closed_port()}")
    with pytest.raises(cluster_checks.ClusterUnreachableError):
        ray_utils.init_ray()


def test_local_instance_is_not_checked_and_shared_paths_are(fresh_ray, monkeypatch):
    checked = []
    monkeypatch.setattr(ray_utils, "check_before_init", lambda address: checked.append(address))
    monkeypatch.setattr(ray_utils, "check_shared_storage", lambda path: checked.append(path))
    assert ray_utils.init_ray(num_cpus=1, shared_paths=["outputs/run"]) == "context"
    assert fresh_ray[0]["address"] == "local" and fresh_ray[0]["num_cpus"] == 1
    assert checked == ["outputs/run"]
    ray_utils.init_ray("10.0.0.1:6379")
    assert checked == ["outputs/run", "10.0.0.1:6379"]
    assert fresh_ray[1]["address"] == "10.0.0.1:6379" and "num_cpus" not in fresh_ray[1]
