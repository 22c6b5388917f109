"""Tune sweeps: search space, resource sizing, Train -> Tune reports, and one real sweep that is
killed, cleaned up, resumed with Tuner.restore and exported for scoring."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.synthetic.crosscam import BenchmarkData, generate_benchmark_store
from pipeline.train.trainer import TrainConfig
from pipeline.tune import sweep as tuning

pytestmark = pytest.mark.slow  # sweeps and their kill-and-restore run whole trainings

REPO = Path(__file__).resolve().parents[1]


def test_parse_param_forms():
    assert tuning.parse_param("lr=loguniform:1e-4:1e-2") == ("lr", {"loguniform": [1e-4, 1e-2]})
    assert tuning.parse_param("beta=choice:0.5,1.0") == ("beta", {"choice": [0.5, 1.0]})
    assert tuning.parse_param("alpha_sim=uniform:0.1:2") == ("alpha_sim", {"uniform": [0.1, 2]})
    assert tuning.parse_param("gamma=0.5") == ("gamma", 0.5)
    assert tuning.parse_param("backbone=vilt") == ("backbone", "vilt")
    with pytest.raises(ValueError, match="NAME=SPEC"):
        tuning.parse_param("lr")


def test_search_space_fixed_values_and_refusals():
    assert tuning.search_space({"gamma": 0.5, "beta": {"grid": [0.1, 1.0]}})["gamma"] == 0.5
    with pytest.raises(ValueError, match="not a TrainConfig field"):
        tuning.search_space({"momentum": {"uniform": [0, 1]}})
    with pytest.raises(ValueError, match="expected one of"):
        tuning.search_space({"lr": {"normal": [0, 1]}})


def test_space_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "space:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  gamma: 0.2\ntrain:\n  epochs: 3\n"
    )
    space, train = tuning.load_space_file(path)
    assert space == {"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": 0.2} and train == {"epochs": 3}
    path.write_text("spaces: {}\n")
    with pytest.raises(ValueError, match="unknown sections"):
        tuning.load_space_file(path)


def test_sweep_config_validation(tmp_path):
    with pytest.raises(ValueError, match="num_workers >= 1"):
        tuning.SweepConfig(features="f", out="o", train={"num_workers": 0})
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        tuning.SweepConfig(features="f", out="o", train={"wings": 2})
    with pytest.raises(ValueError, match="scheduler"):
        tuning.SweepConfig(features="f", out="o", scheduler="pbt")


def test_concurrency_and_resources_are_derived_from_the_cluster():
    small = TrainConfig.from_flat(features="f", out="o", num_workers=1, cpus_per_worker=0.25)
    # 2 CPUs, 1 kept for Ray Data: two trials of 0.25 (driver) + 0.25 (worker).
    assert tuning.concurrent_trials(small, 0.25, 1.0, {"CPU": 2.0}) == 2
    assert tuning.concurrent_trials(small, 0.25, 1.0, {"CPU": 16.0}) == 30
    whole = TrainConfig.from_flat(features="f", out="o", num_workers=1, cpus_per_worker=1.0)
    with pytest.raises(ValueError, match="lower cpus_per_worker"):
        tuning.concurrent_trials(whole, 0.25, 1.0, {"CPU": 2.0})  # the set-up that stalls
    gpu = TrainConfig.from_flat(
        features="f", out="o", num_workers=2, cpus_per_worker=4, use_gpu=True
    )
    assert tuning.concurrent_trials(gpu, 1.0, 1.0, {"CPU": 64.0, "GPU": 4.0}) == 2
    assert tuning.trial_resources(small, 0.25).bundles == [{"CPU": 0.25}]
    local = TrainConfig.from_flat(features="f", out="o", num_workers=0, cpus_per_worker=0.5)
    assert tuning.trial_resources(local, 0.25).bundles == [{"CPU": 0.25}, {"CPU": 0.5}]


class _Queue(list):
    put = list.append


def test_epoch_report_flattens_the_loops_reports():
    callback = object.__new__(tuning.TuneEpochReport)  # __init__ needs a Tune session
    callback._training_actor_item_queue = queue = _Queue()
    epoch = {"epoch": 0, "lr": 1e-3, "rows": 8, "stage": "end2end"}
    epoch.update(train={"total": 2.5, "L_class": 1.0}, val={"acc1": 0.25, "acc5": 1.0})
    callback.after_report(None, [epoch, {**epoch, "val": {}}], None)
    splits = {
        name: {"acc1": value} for name, value in (("train", 0.9), ("val", 0.5), ("test", 0.4))
    }
    callback.after_report(None, [{"epoch": 1, "final": True, "splits": splits}], None)
    first, last = queue
    assert first == {"epoch": 1, "final": False, "val": epoch["val"], "train_loss": 2.5, "lr": 1e-3}
    assert last["final"] and last["epoch"] == 2
    assert last["val"] == {"acc1": 0.5} and last["test"] == {"acc1": 0.4}


# ---------------------------------------------------------------------------- on Ray


def test_release_worker_groups_removes_the_groups_of_ended_trials(ray_session, tmp_path):
    from ray.util.placement_group import placement_group, placement_group_table

    group = placement_group([{"CPU": 0.25}])
    ray_session.get(group.ready(), timeout=120)
    path = tmp_path / "trials" / "t1" / tuning.PLACEMENT_GROUPS
    path.parent.mkdir(parents=True)
    path.write_text(group.id.hex() + "\n")
    callback = tuning.ReleaseWorkerGroups(str(tmp_path), grace_s=0.0)
    callback.on_step_begin(0, [SimpleNamespace(trial_id="t1", status="RUNNING")])
    assert placement_group_table(group)["state"] == "CREATED"  # a running trial keeps its group
    callback._last_check = 0.0  # the callback looks at most every 2 s
    callback.on_step_begin(1, [SimpleNamespace(trial_id="t1", status="TERMINATED")])
    deadline = time.monotonic() + 60
    while placement_group_table(group)["state"] != "REMOVED":
        assert time.monotonic() < deadline, "the ended trial's group was not removed"
        time.sleep(0.5)
    assert tuning.release_placement_groups(path) == 0  # already gone: nothing to do


# ---------------------------------------------------------------------------- a real sweep

# A val split large enough that trials differ at the first epoch (ASHA stops the worse half).
TINY = BenchmarkData(
    num_classes=4, train_cameras=2, test_cameras=1, videos_per_camera=40, clips=3, val_fraction=0.3
)
SMALL_MODEL = {"hidden_dim": 16, "shared_dim": 16, "rho": 8}
SWEEP_TRAIN = {"epochs": 3, "batch_size": 8, "hidden_dim": 16, "shared_dim": 16, "rho": 8}
SWEEP_TRAIN["strategy"] = "end2end"  # ASHA's rungs count epochs
SWEEP_TRAIN.update(num_workers=1, cpus_per_worker=0.25)
# All trials learn: a higher lr than the paper's video range, small batches.
# The kill-and-restore sweep: 2 trials at a time, so the kill after the first finished trial
# leaves trials running and trials not started.
KILL_SAMPLES = 4
SWEEP_SPACE = {**tuning.DEFAULT_SPACE, "lr": {"loguniform": [1e-3, 1e-2]}, "batch_size": 8}


def _wait_until_released(ray, timeout: float = 120.0, allowed: set[str] = frozenset()) -> None:
    """Every placement group removed (but those whose ids are ``allowed``) and every CPU not
    held by them free again: no trial, Train controller or worker of the sweep is left."""
    total = ray.cluster_resources()["CPU"]
    deadline = time.monotonic() + timeout
    while True:
        table = ray.util.placement_group_table().items()
        groups = [(k, g) for k, g in table if g["state"] != "REMOVED"]
        kept = sum(
            sum(b.get("CPU", 0.0) for b in g["bundles"].values()) for k, g in groups if k in allowed
        )
        free = ray.available_resources().get("CPU", 0.0)
        if all(k in allowed for k, _ in groups) and abs(free + kept - total) < 1e-6:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still held after {timeout} s: {len(groups)} groups, {free}/{total} CPU")
        time.sleep(1.0)


def _start_driver(ray, store: str, out: Path, log: Path) -> subprocess.Popen:
    """jobs/tune.py as a separate driver on the test's Ray instance (so it can be killed)."""
    arguments = [sys.executable, str(REPO / "jobs" / "tune.py"), "--features", store]
    arguments += ["--out", str(out), "--num-samples", str(KILL_SAMPLES), "--trial-cpus", "0.25"]
    arguments += ["--address", ray.get_runtime_context().gcs_address]
    arguments += [f"--set={key}={value}" for key, value in SWEEP_TRAIN.items()]
    arguments += ["--param=lr=loguniform:1e-3:1e-2", "--param=batch_size=8"]
    with open(log, "w") as handle:
        return subprocess.Popen(
            arguments, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.mark.slow
def test_sweep_killed_resumed_and_best_model_scores(ray_session, tmp_path):
    from pipeline.artifact import model_id, resolve_model_dir
    from pipeline.score.batch import CRIFScorer
    from pipeline.store import read_store

    store = tmp_path / "store"
    generate_benchmark_store(store, TINY)
    out = tmp_path / "sweep"
    driver = _start_driver(ray_session, str(store), out, tmp_path / "driver.log")
    deadline = time.monotonic() + 600
    while not list(out.glob("trials/*/metrics.json")):  # one trial has finished
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(1.0)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep, trials and all
    driver.wait()
    # Ray ends the dead driver's trials; Train worker groups can outlive them (Ray 2.60), and
    # only those the sweep recorded may remain until the restored sweep releases them.
    recorded = {line for path in out.glob(f"trials/*/{tuning.PLACEMENT_GROUPS}")
                for line in path.read_text().split()}  # fmt: skip
    _wait_until_released(ray_session, allowed=recorded)

    config = tuning.SweepConfig(
        features=str(store), out=str(out), num_samples=KILL_SAMPLES, space=SWEEP_SPACE,
        train=SWEEP_TRAIN,
    )  # fmt: skip
    summary = tuning.run_sweep(config)  # Tuner.restore: same out
    assert summary["restored"] and summary["trials"] == KILL_SAMPLES
    assert summary["max_concurrent_trials"] == 2
    assert summary["status"].get("completed", 0) >= 1 and "error" not in summary["status"]
    print("trials by status:", summary["status"])  # ASHA's stops depend on trial order
    _wait_until_released(ray_session)  # ASHA-stopped and finished trials let go too
    table = (out / "results.md").read_text()
    assert table.count("| completed |") + table.count("| stopped early |") == KILL_SAMPLES
    for plot in ("params.png", "learning_curves.png"):
        assert (out / "plots" / plot).stat().st_size > 0

    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["trial"] == summary["best"]["trial"] and best["model"] == "model"
    assert (out / "best" / "learning_curves.png").is_file()
    model_dir = resolve_model_dir(out)  # what jobs/score.py --model OUT resolves
    assert model_dir == out / "best" / "model"
    scorer = CRIFScorer(str(model_dir), top_k=1, model_id=model_id(model_dir))
    test = read_store(store, ["video_id", "split", "label", "visual"])
    test = test.filter(np.asarray(test.column("split").to_pylist()) == "test")
    predicted = [row[0] for row in scorer(test).column("top_k_indices").to_pylist()]
    accuracy = float(np.mean(np.asarray(predicted) == np.asarray(test.column("label"))))
    assert accuracy == pytest.approx(best["splits"]["test"]["acc1"])


# ---------------------------------------------------------------------------- from a head node


@pytest.mark.cluster
def test_sweep_submitted_to_a_two_cpu_head_with_no_resource_flags(tmp_path):
    """``ray job submit --working-dir . -- python jobs/tune.py --features F --out O
    --num-samples N`` on a fresh 2-CPU head: no resource flag, only small-model settings.
    Resources are sized from the cluster and the space is the paper's video setting (batch
    sizes 32..256, all larger than this store's train split). The README's 8 samples run
    the same way; 4 keep the test's time (one trial at a time on 2 CPUs, ~30 s each)."""
    from cluster_helpers import generate_token, run_ray_cli, runtime_env_json, start_head, stop_head

    store, out = tmp_path / "store", tmp_path / "sweep"
    data = BenchmarkData(num_classes=4, train_cameras=2, test_cameras=1, videos_per_camera=4,
                         clips=2, val_fraction=0.3)  # fmt: skip
    generate_benchmark_store(store, data)
    entrypoint = ["python", "jobs/tune.py", "--features", str(store), "--out", str(out)]
    entrypoint += ["--num-samples", "4", "--set", "epochs_per_stage=1"]
    entrypoint += [f"--set={name}={width}" for name, width in SMALL_MODEL.items()]
    head = start_head(REPO, token=generate_token(), num_cpus=2)
    try:
        arguments = ["job", "submit", "--address", head.dashboard_url, "--working-dir", "."]
        arguments += ["--runtime-env-json", runtime_env_json(), "--", *entrypoint]
        started = time.monotonic()
        result = run_ray_cli(arguments, head.client_environment(), REPO, timeout=1500)
        print(f"submitted sweep of 4 trials: {time.monotonic() - started:.0f} s")
    finally:
        stop_head(head)
    logs = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, logs
    console = result.stdout + result.stderr
    assert "succeeded" in console.lower(), logs
    sized = (
        "trial resources: cluster 2 CPU; Ray Data keeps 1 CPU, a trial takes 0.25 CPU + 1 "
        "worker(s) x 0.75 CPU; 1 trial(s) at a time"
    )
    assert sized in console and "given: none" in console, logs
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and all(row["status"] != "error" for row in rows), rows
    assert {int(row["batch_size"]) for row in rows} <= {32, 64, 128, 256}
    assert all(1e-6 <= float(row["lr"]) <= 1e-3 for row in rows)
    assert (out / "best" / "model").is_dir()
