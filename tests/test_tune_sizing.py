"""Sweep set-up without Ray: trial resources sized from the cluster, the paper's video search
space, and the val split a val objective needs."""

from __future__ import annotations

import pytest

from pipeline.synthetic.crosscam import BenchmarkData, generate_benchmark_store
from pipeline.train.data import inspect_store
from pipeline.train.trainer import TrainConfig
from pipeline.tune import sweep as tuning

DEFAULT = TrainConfig.from_flat(features="f", out="o")  # 1 worker, CPU only


def _fits(sized: tuning.TrialResources, config: TrainConfig, cluster: dict) -> None:
    """The choice fits: its trials and Ray Data's CPUs within the cluster, one trial at least."""
    workers = max(config.resources.num_workers, 1)
    per_trial = sized.trial_cpus + workers * sized.cpus_per_worker
    assert sized.max_concurrent_trials >= 1
    assert sized.max_concurrent_trials * per_trial + sized.data_cpus <= cluster["CPU"] + 1e-9
    whole = sized.cpus_per_worker >= 1
    assert sized.cpus_per_worker == int(sized.cpus_per_worker) if whole else True  # Ray's rule


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [  # CPUs -> (data, trial, per worker, concurrency)
        (2, (1.0, 0.25, 0.75, 1)),  # 1 CPU per worker does not fit beside Ray Data's 1
        (4, (1.0, 0.25, 1.0, 2)),
        (16, (1.0, 0.25, 1.0, 12)),
    ],
)
def test_sizing_on_cpu_clusters(cpus, expected):
    cluster = {"CPU": float(cpus)}
    sized = tuning.size_trials(cluster, DEFAULT)
    got = (sized.data_cpus, sized.trial_cpus, sized.cpus_per_worker, sized.max_concurrent_trials)
    assert got == expected
    assert set(sized.derived) == {"data_cpus", "trial_cpus", "cpus_per_worker",
                                  "max_concurrent_trials"}  # fmt: skip
    _fits(sized, DEFAULT, cluster)
    line = sized.describe(1, cluster)
    assert line.startswith(f"trial resources: cluster {cpus} CPU;") and "given: none" in line


def test_sizing_with_gpus_shares_the_cpus_beside_each_trials_gpus():
    gpu = DEFAULT.replace_flat(use_gpu=True)
    one = tuning.size_trials({"CPU": 16.0, "GPU": 1.0}, gpu)
    assert (one.max_concurrent_trials, one.cpus_per_worker, one.data_cpus) == (1, 14.0, 1.0)
    pairs = gpu.replace_flat(num_workers=2)
    cluster = {"CPU": 64.0, "GPU": 4.0}
    two = tuning.size_trials(cluster, pairs)  # 2 trials of 2 GPU workers; Ray Data 64 / 16
    assert (two.max_concurrent_trials, two.cpus_per_worker, two.data_cpus) == (2, 14.0, 4.0)
    _fits(two, pairs, cluster)
    assert "2 trial(s) by GPU" in two.describe(2, cluster)
    with pytest.raises(ValueError, match="needs 2 GPU"):
        tuning.size_trials({"CPU": 16.0, "GPU": 1.0}, pairs)


def test_given_values_are_kept_and_checked():
    sized = tuning.size_trials({"CPU": 2.0}, DEFAULT, cpus_per_worker=0.25, trial_cpus=0.25)
    assert (sized.cpus_per_worker, sized.max_concurrent_trials) == (0.25, 2)
    assert set(sized.derived) == {"data_cpus", "max_concurrent_trials"}
    assert "given: cpus_per_worker, trial_cpus" in sized.describe(1, {"CPU": 2.0})
    assert (
        tuning.size_trials({"CPU": 16.0}, DEFAULT, max_concurrent_trials=3).max_concurrent_trials
        == 3
    )
    # The set-up that used to be the default stalls on 2 CPUs: refused, with what to change.
    with pytest.raises(ValueError, match="lower cpus_per_worker or trial_cpus .or leave them out"):
        tuning.size_trials({"CPU": 2.0}, DEFAULT, cpus_per_worker=1.0)
    with pytest.raises(ValueError, match="leave no room for a trial"):
        tuning.size_trials({"CPU": 2.0}, DEFAULT, data_cpus=1.9)


def test_sweep_config_sizes_what_train_leaves_out():
    auto = tuning.SweepConfig(features="f", out="o")
    assert (auto.trial_cpus, auto.data_cpus) == (None, None)
    assert auto.trial_sizing({"CPU": 2.0}).cpus_per_worker == 0.75
    given = tuning.SweepConfig(features="f", out="o", train={"cpus_per_worker": 0.5})
    assert given.trial_sizing({"CPU": 2.0}).cpus_per_worker == 0.5


def test_default_space_is_the_papers_video_setting():
    space = tuning.search_space(tuning.DEFAULT_SPACE)
    assert set(space) == {"alpha_sim", "alpha_align", "beta", "gamma", "lr", "batch_size"}
    for _ in range(100):
        assert 0.1 <= space["alpha_sim"].sample() <= 2.0
        assert 0.1 <= space["alpha_align"].sample() <= 2.0
        assert space["beta"].sample() in (0.1, 0.2, 0.5, 1.0)
        assert space["gamma"].sample() in (0.1, 0.2, 0.5, 1.0)
        assert 1e-6 <= space["lr"].sample() <= 1e-3
        assert space["batch_size"].sample() in (32, 64, 128, 256)
    assert "LogUniform" in type(space["lr"].get_sampler()).__name__  # log-uniform, not uniform


def test_a_val_objective_needs_a_val_split(tmp_path):
    data = BenchmarkData(num_classes=2, train_cameras=1, test_cameras=1, videos_per_camera=8,
                         clips=2, val_fraction=0.0)  # fmt: skip
    generate_benchmark_store(tmp_path, data)
    store = inspect_store(tmp_path, None)
    with pytest.raises(ValueError, match="val_fraction=0.1, or extract the store with a val"):
        tuning.check_objective("val/acc1", store)
    tuning.check_objective("test/acc1", store)  # another split's metric needs no val
    tuning.check_objective("val/acc1", inspect_store(tmp_path, None, val_fraction=0.3))
