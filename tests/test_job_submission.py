"""Real job submission to a token-authenticated local head, and the operational checks.

One head (``ray start --head --num-cpus 2``, RAY_AUTH_MODE=token, a token generated for
the test, 127.0.0.1, free ports) serves the module; ``ray job submit --working-dir .``
uploads the checkout (without .venv, .git, outputs) and runs the entrypoint with the head's
``python``, which is the venv's because the head was started with the venv on its PATH.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.common.cluster_checks import (
    AuthenticationFailedError,
    ClusterUnreachableError,
    GpuUnavailableError,
    StorageNotSharedError,
    check_before_init,
    check_gpus,
    check_reachable,
    check_shared_storage,
    check_token,
    filesystem_type,
    parse_address,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_helpers import (  # noqa: E402
    find_free_ports,
    generate_token,
    run_ray_cli,
    runtime_env_json,
    start_head,
    stop_head,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_SECONDS = 240

# Runs inside the job: proves which python ran it and where the project was imported from.
PROBE = (
    "import json, os, sys, pipeline.store as store; "
    "json.dump({'executable': sys.executable, 'cwd': os.getcwd(), 'store': store.__file__, "
    "'ray_address': os.environ.get('RAY_ADDRESS')}, open(sys.argv[1], 'w'))"
)


@pytest.fixture(scope="module")
def token_head():
    head = start_head(REPO_ROOT, token=generate_token(), num_cpus=2)
    try:
        yield head
    finally:
        stop_head(head)


def submit(head, submission_id: str, entrypoint: list[str], token: str | None = None):
    arguments = ["job", "submit", "--address", head.dashboard_url]
    arguments += ["--submission-id", submission_id, "--working-dir", "."]
    arguments += ["--runtime-env-json", runtime_env_json(), "--", *entrypoint]
    return run_ray_cli(
        arguments, head.client_environment(token), REPO_ROOT, timeout=JOB_TIMEOUT_SECONDS
    )


def job_status(head, submission_id: str) -> str:
    result = run_ray_cli(
        ["job", "status", "--address", head.dashboard_url, submission_id],
        head.client_environment(),
        REPO_ROOT,
    )
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------- submission


@pytest.mark.cluster
def test_job_runs_in_the_uploaded_working_dir_with_the_venv_python(token_head, tmp_path):
    output = tmp_path / "probe.json"
    submission_id = f"crif-probe-{uuid.uuid4().hex[:8]}"
    result = submit(token_head, submission_id, ["python", "-c", PROBE, str(output)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SUCCEEDED" in job_status(token_head, submission_id).upper()

    probe = json.loads(output.read_text())
    assert Path(probe["executable"]).parent == Path(sys.executable).parent  # the venv's python
    uploaded = Path(probe["cwd"])
    assert token_head.temp_dir in uploaded.parents  # unpacked by the head, not the checkout
    assert Path(probe["store"]) == uploaded / "pipeline" / "store.py"
    assert not (uploaded / ".venv").exists() and not (uploaded / ".git").exists()
    assert probe["ray_address"].endswith(f":{token_head.gcs_port}")


@pytest.mark.cluster
def test_wrong_or_missing_token_is_refused(token_head):
    arguments = ["job", "list", "--address", token_head.dashboard_url]
    wrong = run_ray_cli(arguments, token_head.client_environment(token=generate_token()))
    assert wrong.returncode != 0
    assert "Invalid authentication token" in wrong.stdout + wrong.stderr

    environment = token_head.client_environment()
    environment["RAY_AUTH_MODE"] = "disabled"  # sends no token at all
    del environment["RAY_AUTH_TOKEN"]
    missing = run_ray_cli(arguments, environment)
    assert missing.returncode != 0
    assert "Missing authentication token" in missing.stdout + missing.stderr


@pytest.mark.cluster
def test_extract_job_on_synthetic_data(token_head, tmp_path):
    from pipeline import store
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    dataset = generate_synthetic_dataset(
        tmp_path / "synthetic",
        SyntheticConfig(num_videos=4, num_classes=2, duration=1.6, seed=5),
    )
    out = tmp_path / "store"
    entrypoint = ["python", "jobs/extract.py", "--dataset", "msrvtt"]
    entrypoint += ["--videos", str(dataset["videos"]), "--annotations"]
    entrypoint += [str(path) for path in dataset["annotations"]]
    entrypoint += ["--out", str(out), "--s3d-weights", "random", "--clip-len", "16"]
    entrypoint += ["--limit", "2", "--modalities", "visual"]
    submission_id = f"crif-extract-{uuid.uuid4().hex[:8]}"
    result = submit(token_head, submission_id, entrypoint)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    metadata = store.validate_store(out)
    assert set(metadata["modalities"]) == {"visual"}
    table = store.read_store(out)
    assert table.num_rows == 2
    assert all(row["visual"] for row in table.to_pylist())


# ---------------------------------------------------------------------------- checks: head


@pytest.mark.cluster
def test_check_token_accepts_the_right_token_and_names_the_wrong_one(token_head):
    assert check_token(token_head.dashboard_url, token=token_head.token) == "token"
    with pytest.raises(AuthenticationFailedError, match="refused the token"):
        check_token(token_head.dashboard_url, token=generate_token())


@pytest.mark.cluster
def test_check_before_init_passes_for_a_live_dashboard(token_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", token_head.token)
    check_before_init(token_head.dashboard_url)
    check_before_init(f"127.0.0.1:{token_head.gcs_port}")  # GCS address: reachability only
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(AuthenticationFailedError):
        check_before_init(token_head.dashboard_url)


# ---------------------------------------------------------------------------- checks: unit


def test_parse_address_kinds():
    assert parse_address("http://127.0.0.1:8265") == ("http", "127.0.0.1", 8265)
    assert parse_address("ray://head:10001") == ("ray", "head", 10001)
    assert parse_address("10.0.0.5:6379") == ("gcs", "10.0.0.5", 6379)
    assert parse_address("head-svc") == ("gcs", "head-svc", 6379)


@pytest.mark.timeout(30)  # a hang guard, not a speed assertion
def test_unreachable_address_fails_fast():
    (closed_port,) = find_free_ports(1)  # released at once: nothing listens there
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{closed_port}"):
        check_reachable(f"http://127.0.0.1:{closed_port}", timeout=1.0)
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{closed_port}"):
        check_before_init(f"127.0.0.1:{closed_port}", timeout=1.0)


@pytest.mark.timeout(30)  # a hang guard, not a speed assertion
def test_silent_address_times_out_instead_of_hanging():
    # A listener whose backlog is full never completes a handshake: like a blackholed host.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        port = listener.getsockname()[1]
        for _ in range(8):  # fill the accept queue
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        # The check must end by itself (pytest-timeout guards the hang): either it reports
        # the address unreachable, or the kernel completed a handshake after all.
        try:
            check_reachable(f"127.0.0.1:{port}", timeout=1.0)
        except ClusterUnreachableError as error:
            assert f"127.0.0.1:{port}" in str(error)
    finally:
        for handle in [*fillers, listener]:
            handle.close()


def test_check_before_init_skips_a_new_local_instance(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_before_init(None)
    check_before_init("local")


def test_shared_storage_accepts_uris_and_single_host_paths(tmp_path):
    two_hosts = ["10.0.0.1", "10.0.0.2"]
    check_shared_storage("s3://bucket/features", node_hosts=two_hosts)
    check_shared_storage("gs://bucket/checkpoints", node_hosts=two_hosts)
    check_shared_storage(str(tmp_path), node_hosts=["10.0.0.1"])
    check_shared_storage(str(tmp_path), node_hosts=["10.0.0.1", "10.0.0.1"])  # 2 nodes, 1 host


def test_shared_storage_refuses_a_local_path_on_several_hosts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\nserver:/export /mnt/crif nfs4 rw 0 0\n")
    two_hosts = ["10.0.0.1", "10.0.0.2"]
    with pytest.raises(StorageNotSharedError, match="2 hosts"):
        check_shared_storage("/data/features", node_hosts=two_hosts, mounts_file=str(mounts))
    with pytest.raises(StorageNotSharedError):
        check_shared_storage("file:///data/x", node_hosts=two_hosts, mounts_file=str(mounts))
    check_shared_storage("/mnt/crif/features", node_hosts=two_hosts, mounts_file=str(mounts))
    assert filesystem_type("/mnt/crif/features", str(mounts)) == "nfs4"
    assert filesystem_type("/mnt/crifx", str(mounts)) == "ext4"
    with pytest.raises(StorageNotSharedError, match="unknown storage scheme"):
        check_shared_storage("ftp://host/x", node_hosts=two_hosts)


def test_check_gpus_against_cluster_resources():
    assert check_gpus(0, {"CPU": 2.0}) == 0.0
    assert check_gpus(2, {"CPU": 8.0, "GPU": 4.0}) == 4.0
    with pytest.raises(GpuUnavailableError, match="1 GPU.*has 0"):
        check_gpus(1, {"CPU": 2.0})
    with pytest.raises(GpuUnavailableError, match="has 1"):
        check_gpus(1.5, {"GPU": 1.0})


def test_check_gpus_reads_the_connected_cluster_by_default(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert check_gpus(1) == 1.0
    with pytest.raises(GpuUnavailableError):
        check_gpus(2)


# ---------------------------------------------------------------------------- stop (last)


@pytest.mark.cluster
def test_stopping_the_head_leaves_nothing_behind(token_head):
    """Runs last in this module: stops the shared head (the fixture's stop is then a no-op)."""
    assert token_head.address_file.exists()
    stop_head(token_head)
    assert token_head.process.poll() is not None
    assert not token_head.address_file.exists() and not token_head.temp_dir.exists()
    with pytest.raises(ClusterUnreachableError, match="unreachable"):
        check_reachable(token_head.dashboard_url, timeout=2.0)
