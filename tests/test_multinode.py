"""Extraction and distributed training on a three-node Ray cluster on one machine, with faults.

``ray.cluster_utils.Cluster`` starts a head with no CPUs (it schedules no work, as a
production head should) and two worker nodes of 1 CPU each, so two DDP workers cannot share
a node. The scenario extracts a dataset twice: once on the whole cluster, and once while the
worker node that runs an extraction actor is removed (killed, not drained) mid-job; both
stores must hold the same rows and features. A replacement node
joins, then a 2-worker DDP run loses a worker process (SIGKILL) at its second epoch and must
resume from its last checkpoint on a restarted worker group.

It runs in a subprocess of its own (this file run as a script): the test session's
``ray_session`` owns this process's ``ray.init``. The subprocess gets a private RAY_TMPDIR
(the Cluster's address file lands there, not in /tmp/ray), token authentication with a
generated token, and free ports; whatever it leaves running is killed by process id
afterwards.

    python tests/test_multinode.py WORKDIR     # the scenario alone, prints a JSON summary
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster_helpers import (  # noqa: E402
    find_free_ports,
    generate_token,
    kill_process_tree,
    process_tree,
    venv_bin_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIO_TIMEOUT_SECONDS = 480
NODE_OBJECT_STORE_BYTES = 200 * 1024**2
SUMMARY_MARKER = "MULTINODE-SUMMARY "
VIDEOS = 6
REMOVAL_DELAY_SECONDS = 2.0
EPOCHS = 3


# ---------------------------------------------------------------------------- scenario


def _start_cluster():
    from ray.cluster_utils import Cluster

    client, agent, metrics, runtime_env = find_free_ports(4)
    head = {  # the GCS port is left to Ray (gcs_server_port 0: a free one)
        "num_cpus": 0,
        "include_dashboard": False,
        "ray_client_server_port": client,
        "dashboard_agent_listen_port": agent,
        "metrics_export_port": metrics,
        "runtime_env_agent_port": runtime_env,
        "object_store_memory": NODE_OBJECT_STORE_BYTES,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    return cluster


def _nodes_used_by_concurrent_tasks(count: int) -> set[str]:
    """Node ids of ``count`` 1-CPU tasks that overlap in time: one per node when CPUs are 1."""
    import ray

    @ray.remote(num_cpus=1)
    def where() -> str:
        time.sleep(2.0)
        return ray.get_runtime_context().get_node_id()

    return set(ray.get([where.remote() for _ in range(count)]))


def _dataset(workdir: Path) -> dict:
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    config = SyntheticConfig(num_videos=VIDEOS, num_classes=2, duration=1.6, seed=7)
    return generate_synthetic_dataset(workdir / "synthetic", config)


def _extract(dataset: dict, out: Path) -> dict:
    from pipeline.extract.job import ExtractConfig, extract_features

    config = ExtractConfig(
        videos=str(dataset["videos"]),
        annotations=tuple(str(path) for path in dataset["annotations"]),
        out=str(out),
        modalities=("visual", "text"),
        s3d_weights="random",
        clip_len=16,
        clip_stride=16,
        flush_every=1,  # a part file per video
        model_actors=2,  # up to one extraction actor per worker node
    )
    return extract_features(config)


def _runs_extraction(node) -> bool:
    """Whether one of ``node``'s worker processes is a Ray Data extraction actor."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for pid in process_tree(raylet) - {raylet}:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if command.startswith(b"ray::MapWorker"):
            return True
    return False


class _RemoveNodeMidJob(threading.Thread):
    """Removes (kills) the first worker node of ``cluster`` seen running an extraction actor,
    ``delay`` seconds after it is seen (the actor is then at work on its videos)."""

    def __init__(self, cluster, out: Path, delay: float = REMOVAL_DELAY_SECONDS):
        super().__init__(daemon=True)
        self.cluster, self.out, self.delay = cluster, out, delay
        self.parts_at_removal: int | None = None
        self.victim: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            busy = [node for node in self.cluster.worker_nodes if _runs_extraction(node)]
            if busy:
                if self.done.wait(self.delay):
                    return
                self.parts_at_removal = len(list(self.out.glob("_parts/visual-*/*.parquet")))
                self.victim = busy[0].node_id
                self.cluster.remove_node(busy[0], allow_graceful=False)
                return
            time.sleep(0.05)


def _alive(node_id: str, timeout: float = 30.0) -> bool:
    """Whether Ray still lists the node as alive ``timeout`` s on (or sees it go earlier)."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes()):
            return False
        time.sleep(0.5)
    return True


def _extract_losing_a_node(cluster, dataset: dict, out: Path) -> tuple[dict, _RemoveNodeMidJob]:
    remover = _RemoveNodeMidJob(cluster, out)
    remover.start()
    try:
        result = _extract(dataset, out)
    finally:
        remover.done.set()
        remover.join(timeout=60)
    return result, remover


def _train(store: Path, workdir: Path) -> dict:
    from pipeline.train.trainer import (
        FAIL_AT_EPOCH_ENV,
        FAIL_KIND_ENV,
        TrainConfig,
        run_training,
    )

    config = TrainConfig.from_flat(
        features=str(store),
        out=str(workdir / "run"),
        epochs=EPOCHS,
        strategy="end2end",
        batch_size=8,
        hidden_dim=32,
        shared_dim=32,
        rho=16,
        num_workers=2,
        cpus_per_worker=1.0,
        max_failures=1,
    )
    # At epoch 1 the last rank's worker process dies by SIGKILL (the trainer forwards the
    # driver's CRIF_TEST_* variables to its workers).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAIL_AT_EPOCH_ENV, "1")
        patch.setenv(FAIL_KIND_ENV, "kill")
        return run_training(config)["metrics"]


def run_scenario(workdir: Path) -> dict:
    """Three nodes: shared-storage check, extraction clean and losing a node, a replacement
    node, 2-worker DDP training losing a worker; a JSON-able summary."""
    import ray

    from pipeline.common.cluster_checks import check_shared_storage, cluster_node_hosts

    started = time.monotonic()
    seconds = {}
    cluster = _start_cluster()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        alive = [node for node in ray.nodes() if node["Alive"]]
        # Three nodes on one host share its disk: a local path is fine here.
        check_shared_storage(str(workdir))
        summary = {
            "nodes": len(alive),
            "hosts": cluster_node_hosts(),
            "nodes_used": len(_nodes_used_by_concurrent_tasks(2)),
        }
        seconds["cluster"] = time.monotonic() - started
        dataset = _dataset(workdir)
        clean = _extract(dataset, workdir / "store")
        seconds["extract"] = time.monotonic() - started - sum(seconds.values())
        faulty, remover = _extract_losing_a_node(cluster, dataset, workdir / "faulty")
        seconds["extract_losing_a_node"] = time.monotonic() - started - sum(seconds.values())
        summary.update(
            victim=remover.victim,
            victim_alive=remover.victim is not None and _alive(remover.victim),
            parts_at_removal=remover.parts_at_removal,
            extract={"clean": _tally(clean), "losing_a_node": _tally(faulty)},
        )
        cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE_BYTES)  # replacement
        cluster.wait_for_nodes()
        metrics = _train(workdir / "store", workdir)
        seconds["train"] = time.monotonic() - started - sum(seconds.values())
        summary.update(
            store=str(workdir / "store"),
            faulty_store=str(workdir / "faulty"),
            run=str(workdir / "run"),
            resumes=metrics["resumes"],
            epochs=[entry["epoch"] for entry in metrics["history"]],
            splits=sorted(metrics["splits"]),
            seconds={name: round(value, 1) for name, value in seconds.items()},
        )
        return summary
    finally:
        ray.shutdown()
        cluster.shutdown()


def _tally(result: dict) -> dict:
    """The JSON-able counts of an extract_features result."""
    return json.loads(json.dumps(result, default=str))


# ---------------------------------------------------------------------------- test


def _scenario_environment(ray_temp: Path) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")
    }
    environment.update(
        PATH=f"{venv_bin_dir()}{os.pathsep}{environment.get('PATH', '')}",
        RAY_TMPDIR=str(ray_temp),  # the Cluster's address file and sessions go here
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=generate_token(),
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    return environment


def _run_scenario_process(workdir: Path) -> subprocess.CompletedProcess:
    ray_temp = Path(tempfile.mkdtemp(prefix="crif-mn-", dir="/tmp"))  # short: socket paths
    process = subprocess.Popen(
        [sys.executable, __file__, str(workdir)],
        cwd=REPO_ROOT,
        env=_scenario_environment(ray_temp),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=SCENARIO_TIMEOUT_SECONDS)
        return subprocess.CompletedProcess(process.args, process.returncode, output, "")
    finally:
        kill_process_tree(process.pid)  # anything the Cluster left behind
        process.wait(timeout=10)
        shutil.rmtree(ray_temp, ignore_errors=True)


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT_SECONDS + 60)
def test_extract_and_ddp_training_on_three_nodes_survive_lost_nodes_and_workers(tmp_path):
    import numpy as np

    from pipeline import store

    result = _run_scenario_process(tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(SUMMARY_MARKER)]
    summary = json.loads(line[len(SUMMARY_MARKER) :])
    print(json.dumps(summary, indent=2))

    assert summary["nodes"] == 3 and summary["nodes_used"] == 2
    assert len(summary["hosts"]) == 1
    # Extraction: the node running an extraction actor went while videos were still to do,
    # and the job completed anyway.
    assert summary["victim"] is not None and not summary["victim_alive"]
    assert summary["parts_at_removal"] is not None and summary["parts_at_removal"] < VIDEOS
    clean = store.read_store(summary["store"]).sort_by("video_id")
    faulty = store.read_store(summary["faulty_store"]).sort_by("video_id")
    assert clean.num_rows == VIDEOS
    assert faulty.column("video_id").to_pylist() == clean.column("video_id").to_pylist()
    for name in ("split", "label", "text"):
        assert faulty.column(name).to_pylist() == clean.column(name).to_pylist()
    for ours, theirs in zip(
        faulty.column("visual").to_pylist(), clean.column("visual").to_pylist(), strict=True
    ):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-5)
    assert not list(Path(summary["faulty_store"]).glob("_failures/*.parquet"))
    # Training: the killed worker's group restarted from the epoch-0 checkpoint.
    assert (Path(summary["run"]) / ".injected_failure").exists()
    assert summary["resumes"] == 1
    assert summary["epochs"] == list(range(EPOCHS))
    assert summary["splits"] == ["test", "train", "val"]
    metrics = json.loads((Path(summary["run"]) / "metrics.json").read_text())
    assert {"train", "test"} <= set(metrics["splits"])


if __name__ == "__main__":
    summary = run_scenario(Path(sys.argv[1]))
    print(SUMMARY_MARKER + json.dumps(summary), flush=True)
