"""Ray Tune sweeps of the CRIF loss weights and learning rate (Train V2 inside Tune trials).

    summary = run_sweep(SweepConfig(features="outputs/features", out="outputs/tune"))
    python jobs/tune.py --features outputs/features --out outputs/tune --num-samples 16

- A trial is a Tune function that builds its TorchTrainer with ``train.build_trainer`` (the
  project's only builder): storage ``OUT/trials/<trial id>``, name ``train`` (stable, so a
  restarted trial resumes its Train run) and :class:`TuneEpochReport`, which forwards every
  ``ray.train.report`` of the loop to Tune with the metric (``val/acc1``) in each result.
- ASHA on ``epoch`` (``stop_last_trials=False``: a trial at the last epoch still sends its
  final scores) and seeded random search by default; Optuna if asked for and installed.
- Resources come from the cluster unless given (:func:`size_trials`, one log line says what
  was chosen): ``trial_cpus`` for the trial (the Train driver, 0.25), 0 CPU for the Train V2
  controller (fixed by Ray), ``cpus_per_worker`` per worker in Train's own placement group
  (1, or what is left of one CPU on a 2-CPU machine; with GPUs, the CPUs beside each GPU),
  and ``data_cpus`` left free for Ray Data's read tasks (1, 1 in 16 on large clusters;
  trials that could take them all stall, so that set-up is refused, given or not).
  ``max_concurrent_trials = (CPUs - data_cpus) // (trial + workers)``, capped by GPUs.
- Re-running with the same ``out`` restores the sweep (``Tuner.restore``).
- Local mode (``num_workers=0``) cannot run in a Tune trial's own process (Ray 2.60 refuses
  ``ray.train.get_context`` in a Tune function), so :func:`train_in_task` runs it in a child
  task inside the trial's placement group (the grids); the sweep needs workers, which report
  every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.tune.integration.ray_train import TuneReportCallback

from pipeline.artifact import export_model
from pipeline.common import ray_compat
from pipeline.common.atomic import atomic_write_json
from pipeline.common.configs import check_choices, flat_names
from pipeline.store import read_dataset_json, split_sizes
from pipeline.train.data import StoreSplits, inspect_store, read_datasets
from pipeline.train.trainer import (
    TrainConfig,
    build_trainer,
    metrics_document,
    split_description,
)

__all__ = [
    "DEFAULT_SPACE",
    "ReleaseWorkerGroups",
    "SweepConfig",
    "TuneEpochReport",
    "concurrent_trials",
    "TrialResources",
    "fit_or_restore",
    "load_space_file",
    "local_path",
    "parse_param",
    "prepare_datasets",
    "release_placement_groups",
    "run_sweep",
    "search_space",
    "size_trials",
    "train_in_task",
    "trial_resources",
]

logger = logging.getLogger(__name__)

# The paper's video setting (sections III-E, IV-C): alpha in [0.1, 2.0], beta, gamma in
# {0.1, 0.2, 0.5, 1}, lr in [1e-6, 1e-3] (its image range is 5e-5..5e-3), batch size from
# {32, 64, 128, 256}.
DEFAULT_SPACE: dict[str, Any] = {
    "alpha_sim": {"uniform": [0.1, 2.0]},
    "alpha_align": {"uniform": [0.1, 2.0]},
    "beta": {"choice": [0.1, 0.2, 0.5, 1.0]},
    "gamma": {"choice": [0.1, 0.2, 0.5, 1.0]},
    "lr": {"loguniform": [1e-6, 1e-3]},
    "batch_size": {"choice": [32, 64, 128, 256]},
}
Scheduler = Literal["asha", "fifo"]
Searcher = Literal["random", "optuna"]
SAMPLERS = {
    "uniform": tune.uniform,
    "loguniform": tune.loguniform,
    "choice": lambda *values: tune.choice(list(values)),
    "grid": lambda *values: tune.grid_search(list(values)),
}
PLACEMENT_GROUPS = "placement_groups.txt"  # a trial's Train worker groups, one id a line
MATERIALIZE_BYTES = 1 << 30  # stores smaller than this are read once for all trials
# The TrainConfig fields (flat names) a space or a fixed setting may name.
TRAIN_FIELDS = frozenset(flat_names(TrainConfig)) - {"features", "out"}
KEEP_CHECKPOINTS = 2


def local_path(path: str) -> str:
    """Absolute for local paths (trials and workers run in their own directories); URIs as is."""
    return path if "://" in path else str(Path(path).resolve())


def _scalar(text: str) -> Any:
    """A number when it reads as one (YAML 1.1 would keep '1e-4' a string), else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def parse_param(text: str) -> tuple[str, Any]:
    """``lr=loguniform:1e-4:1e-2``, ``beta=choice:0.5,1.0`` or ``gamma=0.5`` -> (name, spec)."""
    name, _, value = text.partition("=")
    if not value:
        raise ValueError(f"expected NAME=SPEC, got {text!r}")
    kind, _, arguments = value.partition(":")
    if kind not in SAMPLERS:
        return name.strip(), _scalar(value)  # a fixed value
    separator = "," if kind in ("choice", "grid") else ":"
    return name.strip(), {kind: [_scalar(v) for v in arguments.split(separator)]}


def load_space_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(space, train) from YAML ``{space: {name: {uniform: [lo, hi]} | value}, train: {...}}``."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(document) - {"space", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)} (space, train)")
    return dict(document.get("space") or {}), dict(document.get("train") or {})


def search_space(spec: dict[str, Any]) -> dict[str, Any]:
    """Tune domains from a JSON-able spec; unknown names or samplers are refused."""
    space = {}
    for name, value in spec.items():
        if name not in TRAIN_FIELDS:
            raise ValueError(f"{name!r} is not a TrainConfig field")
        if isinstance(value, dict):
            (kind, arguments), *rest = value.items()
            if rest or kind not in SAMPLERS:
                raise ValueError(f"{name}: expected one of {sorted(SAMPLERS)}, got {value!r}")
            value = SAMPLERS[kind](*arguments)
        space[name] = value
    return space


@dataclass(frozen=True)
class SweepConfig:
    """A sweep; ``jobs/tune.py`` maps its flags onto these fields."""

    features: str  # feature store directory
    out: str  # sweep directory (re-run with the same one to resume)
    num_samples: int = 16  # trials sampled from the space (per grid point)
    # the search space: TrainConfig field -> sampler spec or fixed value (the paper's ranges)
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
    train: dict[str, Any] = field(default_factory=dict)  # fixed TrainConfig fields of all trials
    scheduler: Scheduler = "asha"  # ASHA early stopping on epochs, or FIFO (every trial runs)
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2  # ASHA keeps 1 in this many trials at each rung
    searcher: Searcher = "random"  # seeded random search, or Optuna (needs the optuna package)
    metric: str | None = None  # objective (default: val/acc1, val/precision@1 multi-label)
    # CPUs of a trial's own process, the Train driver (default: 0.25)
    trial_cpus: float | None = None
    # CPUs kept free for Ray Data's read tasks (default: 1, 1 in 16 on large clusters)
    data_cpus: float | None = None
    max_concurrent_trials: int | None = None  # (default: derived from the cluster's resources)
    # read the store into memory once for all trials (default: when it is below 1 GiB)
    materialize: bool | None = None
    top_trials: int = 5  # trials whose learning curves are drawn
    seed: int = 0  # seed of the random search
    address: str | None = None  # Ray cluster the sweep ran on (recorded; set by --address)

    def __post_init__(self) -> None:
        check_choices(self)
        unknown = set(self.train) - TRAIN_FIELDS
        if unknown:
            raise ValueError(f"unknown TrainConfig fields in train: {sorted(unknown)}")
        search_space(self.space)  # validates the spec
        if self.base_config().resources.num_workers < 1:
            raise ValueError("sweeps need num_workers >= 1: local mode reports no epochs to Tune")

    def base_config(self, **overrides: Any) -> TrainConfig:
        paths = {"features": local_path(self.features), "out": local_path(self.out)}
        return TrainConfig.from_flat(**{**paths, **self.train, **overrides})

    def trial_sizing(self, cluster: dict[str, float]) -> TrialResources:
        """The trials' CPUs and concurrency on ``cluster``: given fields kept, the rest derived
        (``cpus_per_worker`` is given when ``train`` names it); logged in one line."""
        base = self.base_config()
        sized = size_trials(
            cluster,
            base,
            cpus_per_worker=self.train.get("cpus_per_worker"),
            trial_cpus=self.trial_cpus,
            data_cpus=self.data_cpus,
            max_concurrent_trials=self.max_concurrent_trials,
        )
        logger.info(sized.describe(max(base.resources.num_workers, 1), cluster))
        return sized

    def objective(self) -> str:
        task = read_dataset_json(self.features)["task"]
        return self.metric or ("val/acc1" if task == "single_label" else "val/precision@1")


# ---------------------------------------------------------------------------- resources


def trial_resources(config: TrainConfig, trial_cpus: float) -> tune.PlacementGroupFactory:
    """The trial's placement group: the driver's bundle, plus the run's own in local mode."""
    resources = config.resources
    bundles = [{"CPU": trial_cpus}]
    if resources.num_workers == 0:  # train_in_task runs the loop in a child task of this group
        bundles.append(
            {"CPU": resources.cpus_per_worker, **({"GPU": 1} if resources.use_gpu else {})}
        )
    return tune.PlacementGroupFactory(bundles)


def concurrent_trials(
    config: TrainConfig, trial_cpus: float, data_cpus: float, cluster: dict[str, float]
) -> int:
    """How many trials fit at once next to ``data_cpus`` (refused when not even one does)."""
    resources = config.resources
    workers = max(resources.num_workers, 1)
    per_trial = trial_cpus + workers * resources.cpus_per_worker
    usable = cluster.get("CPU", 0.0) - data_cpus
    if usable + 1e-9 < per_trial:
        raise ValueError(
            f"a trial needs {per_trial:g} CPU (trial {trial_cpus:g} + {workers} x "
            f"{resources.cpus_per_worker:g}) and Ray Data {data_cpus:g}, but the cluster has "
            f"{cluster.get('CPU', 0.0):g}; lower cpus_per_worker or trial_cpus (or leave "
            "them out: they are then sized from the cluster)"
        )
    count = math.floor(usable / per_trial + 1e-9)
    if resources.use_gpu:
        count = min(count, int(cluster.get("GPU", 0.0) // workers))
        if count < 1:
            raise ValueError(f"a trial needs {workers} GPUs; the cluster has too few")
    return count


TRIAL_CPUS = 0.25  # a trial's own process only drives its Train run
CPU_STEP = 0.25  # fractional worker CPUs are multiples of this (Ray: whole numbers above 1)


@dataclass(frozen=True)
class TrialResources:
    """What :func:`size_trials` chose; ``derived`` names the fields taken from the cluster."""

    trial_cpus: float
    data_cpus: float
    cpus_per_worker: float
    max_concurrent_trials: int
    derived: tuple[str, ...]
    reason: str

    def describe(self, workers: int, cluster: dict[str, float]) -> str:
        """The log line: cluster, choice, and why."""
        gpus = f", {cluster.get('GPU', 0.0):g} GPU" if cluster.get("GPU") else ""
        given = sorted({"trial_cpus", "data_cpus", "cpus_per_worker"} - set(self.derived))
        return (
            f"trial resources: cluster {cluster.get('CPU', 0.0):g} CPU{gpus}; Ray Data keeps "
            f"{self.data_cpus:g} CPU, a trial takes {self.trial_cpus:g} CPU + {workers} worker(s)"
            f" x {self.cpus_per_worker:g} CPU; {self.max_concurrent_trials} trial(s) at a time"
            f" ({self.reason}; given: {', '.join(given) or 'none'})"
        )


def _round_down(value: float) -> float:
    """Whole CPUs above 1, multiples of CPU_STEP below (what Ray accepts)."""
    return (
        float(math.floor(value + 1e-9))
        if value >= 1
        else math.floor(value / CPU_STEP + 1e-9) * CPU_STEP
    )


def size_trials(
    cluster: dict[str, float],
    config: TrainConfig,
    *,
    cpus_per_worker: float | None = None,
    trial_cpus: float | None = None,
    data_cpus: float | None = None,
    max_concurrent_trials: int | None = None,
) -> TrialResources:
    """Trial, worker and Ray Data CPUs and the concurrency for ``cluster`` (``ray.cluster_
    resources()``); a value given is kept (and checked), a None one is derived:

    - ``data_cpus``: 1 (one read task at a time), 1 in 16 CPUs on large clusters, at most half;
    - ``trial_cpus``: 0.25 (the trial's process only drives its Train run);
    - ``cpus_per_worker``: without GPUs 1 when a trial of whole-CPU workers fits beside Ray
      Data, else what is left of it (0.75 on 2 CPUs); with ``use_gpu`` the CPUs beside each
      trial's GPUs, shared among its workers.

    Raises ValueError when not even one trial fits beside Ray Data's CPUs.
    """
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    resources = config.resources
    workers = max(resources.num_workers, 1)
    derived = []
    if data_cpus is None:
        data_cpus = min(max(1.0, float(cpus // 16)), cpus / 2)
        derived.append("data_cpus")
    if trial_cpus is None:
        trial_cpus = TRIAL_CPUS
        derived.append("trial_cpus")
    usable = cpus - data_cpus
    reason = "as given"
    if cpus_per_worker is None:
        derived.append("cpus_per_worker")
        if resources.use_gpu:
            if gpus < workers:
                raise ValueError(
                    f"use_gpu: a trial needs {workers} GPU(s); the cluster has {gpus:g}"
                )
            trials = int(gpus // workers)
            share = (usable / trials - trial_cpus) / workers
            reason = f"{trials} trial(s) by GPU, the CPUs beside them shared"
        else:
            share = min(1.0, (usable - trial_cpus) / workers)
            reason = (
                "1 CPU per worker"
                if share >= 1
                else (f"1 CPU per worker does not fit beside Ray Data's {data_cpus:g}")
            )
        cpus_per_worker = max(_round_down(share), 0.0)
        if cpus_per_worker < CPU_STEP:
            raise ValueError(
                f"the cluster's {cpus:g} CPU leave no room for a trial ({trial_cpus:g} CPU + "
                f"{workers} worker(s) of at least {CPU_STEP:g}) beside Ray Data's {data_cpus:g}"
            )
    sized = dataclasses.replace(
        config, resources=dataclasses.replace(resources, cpus_per_worker=cpus_per_worker)
    )
    fit = concurrent_trials(sized, trial_cpus, data_cpus, cluster)  # checks what was given
    if max_concurrent_trials is None:
        derived.append("max_concurrent_trials")
    concurrency = max_concurrent_trials or fit
    return TrialResources(
        trial_cpus, data_cpus, cpus_per_worker, concurrency, tuple(derived), reason
    )


def check_objective(metric: str, store: StoreSplits) -> None:
    """A val objective needs val rows: refuse a store without them (and no val_fraction)."""
    if metric.startswith("val/") and store.split_counts["val"] == 0:
        raise ValueError(
            f"the objective {metric} is measured on the val split, and {store.root} has none "
            f"({split_sizes(store.split_counts)}): hold out train videos with "
            "--set val_fraction=0.1, or extract the store with a val split"
        )


def prepare_datasets(
    features: str, semantic: str | None, materialize: bool | None, val_fraction: float = 0.0
):
    """The store's splits read once (``Dataset.materialize``) for every trial to share, or
    None (each run reads the store itself). Without it, every epoch of every trial re-runs
    the Parquet reads, whose task start-up dominates small runs. ``None``: when below 1 GiB."""
    if materialize is False:
        return None
    limit_mb = math.inf if materialize else MATERIALIZE_BYTES / 2**20
    return read_datasets(inspect_store(features, semantic, val_fraction), limit_mb)


# ---------------------------------------------------------------------------- trials


class TuneEpochReport(TuneReportCallback):
    """Train -> Tune, one result per ``ray.train.report`` of the train loop (on the controller).

    Epoch reports become ``{epoch (1-based), val/<metric>, train_loss, lr}``; the loop's final
    report becomes ``{final: True, val/..., test/..., train/...}`` from its whole-split scores.
    """

    def after_report(self, run_context, metrics, checkpoint):
        report = metrics[0]
        if report.get("final"):
            splits = report["splits"]
            result = {"epoch": report["epoch"] + 1, "final": True}
            result.update(val=splits.get("val", {}), test=splits.get("test", {}))
            result["train"] = splits.get("train", {})
        else:
            result = {"epoch": report["epoch"] + 1, "final": False, "val": report["val"]}
            result.update(train_loss=report["train"].get("total"), lr=report["lr"])
        super().after_report(run_context, [result], checkpoint)


class ReleaseWorkerGroups(tune.Callback):
    """Driver side: remove the worker placement groups of trials that have ended.

    When Tune stops a trial (ASHA), its Train controller dies with the trial's process, and
    Ray 2.60 leaves the workers' placement group to a detached PlacementGroupCleaner that
    needs the state API (a dashboard, one Ray instance per machine); without it the group
    holds its CPUs until the driver exits and later trials starve. ``grace_s`` after a trial
    ends (its controller is gone by then), its recorded groups are removed; they are checked
    again until ``settle_s`` in case a dying controller started one more.
    """

    def __init__(self, root: str, grace_s: float = 5.0, settle_s: float = 120.0):
        self.root, self.grace_s, self.settle_s = root, grace_s, settle_s
        self._ended: dict[str, float] = {}
        self._last_check = 0.0

    def on_step_begin(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last_check < 2.0:
            return
        self._last_check = now
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):  # pending, running, or retried
                self._ended.pop(trial.trial_id, None)
                continue
            ended = self._ended.setdefault(trial.trial_id, now)
            if self.grace_s <= now - ended <= self.settle_s:
                release_placement_groups(self._groups(trial))

    def on_experiment_end(self, trials, **info) -> None:
        time.sleep(self.grace_s)
        for trial in trials:
            release_placement_groups(self._groups(trial))

    def _groups(self, trial) -> Path:
        return Path(self.root) / "trials" / trial.trial_id / PLACEMENT_GROUPS


def release_placement_groups(path: Path) -> int:
    """Remove the placement groups listed in ``path`` that still exist; how many were."""
    group_ids = path.read_text().split() if path.is_file() else []
    return ray_compat.release_placement_groups(group_ids)


def _sweep_trial(
    params: dict[str, Any], *, base: dict[str, Any], root: str, datasets: dict | None
) -> None:
    """One trial: build and fit the trainer, write the run's metrics.json (not its model)."""
    run_dir = Path(root) / "trials" / tune.get_context().get_trial_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_flat(**{**base, **params, "out": str(run_dir)})
    run_config = RunConfig(
        storage_path=str(run_dir.resolve()),
        name="train",  # stable: a restarted trial resumes its Train run
        callbacks=[
            TuneEpochReport(),
            ray_compat.placement_group_recorder(run_dir / PLACEMENT_GROUPS),
        ],
        failure_config=FailureConfig(max_failures=config.resources.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
    )
    result = build_trainer(config, datasets=datasets, run_config=run_config).fit()
    store = inspect_store(config.features, config.semantic_modality, config.val_fraction)
    document = metrics_document(config, result.return_value, store)
    document["checkpoint"] = result.checkpoint.path
    atomic_write_json(run_dir / "metrics.json", document, default=str)


def _run_training_task(loop_config: dict[str, Any], datasets: dict | None) -> dict[str, Any]:
    from pipeline.train.trainer import TrainConfig, run_training

    return run_training(TrainConfig.from_dict(loop_config), datasets=datasets)


def train_in_task(config: TrainConfig, datasets: dict | None = None) -> dict[str, Any]:
    """``run_training`` in a child task (captured by the trial's placement group)."""
    import ray

    task = ray.remote(_run_training_task).options(
        num_cpus=config.resources.cpus_per_worker,
        num_gpus=1 if config.resources.use_gpu else 0,
        max_retries=0,
    )
    return ray.get(task.remote(asdict(config), datasets))


def _trial_dirname(trial) -> str:
    return trial.trial_id


def fit_or_restore(
    trainable, *, path: Path, param_space: dict, tune_config, run_config
) -> tuple[tune.ResultGrid, bool]:
    """``Tuner.restore`` when ``path`` holds an experiment, else a new one: (results, restored)."""
    if tune.Tuner.can_restore(str(path)):
        logger.info(f"restoring the experiment in {path}")
        tuner = tune.Tuner.restore(
            str(path), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
        return tuner.fit(), True
    tuner = tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )
    return tuner.fit(), False


# ---------------------------------------------------------------------------- the sweep


def _search_algorithm(config: SweepConfig, concurrency: int):
    """Random search (seeded) or Optuna, at most ``concurrency`` trials in flight."""
    if config.searcher == "optuna":
        from ray.tune.search import ConcurrencyLimiter

        try:
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(seed=config.seed)
        except (ImportError, AssertionError) as error:  # Ray asserts optuna is importable
            raise RuntimeError("searcher 'optuna' needs the optuna package installed") from error
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    # TuneConfig(max_concurrent_trials) is ignored for a search generator: limit it here.
    return BasicVariantGenerator(max_concurrent=concurrency, random_state=config.seed)


def _scheduler(config: SweepConfig, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=min(config.grace_period, epochs),
        reduction_factor=config.reduction_factor,
        stop_last_trials=False,  # a trial at the last epoch still sends its final scores
    )


def _export_best(rows: list[dict], out: Path, metric: str) -> dict[str, Any]:
    """OUT/best: the best completed trial's last-epoch model, metrics.json and curves."""
    from pipeline.common.plots import plot_learning_curves

    completed = [row for row in rows if row["status"] == "completed" and row[metric] is not None]
    if not completed:
        raise RuntimeError(f"no trial of the sweep in {out} completed; see results.md")
    best = max(completed, key=lambda row: row[metric])
    document = json.loads((out / "trials" / best["trial"] / "metrics.json").read_text())
    export_model(document.pop("checkpoint"), out / "best" / "model")
    document.update(model="model", trial=best["trial"], objective={metric: best[metric]})
    atomic_write_json(out / "best" / "metrics.json", document, default=str)
    plot_learning_curves(document["history"], out / "best" / "learning_curves.png")
    return best


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep; export the best model; write the table and the plots."""
    import ray

    from pipeline.tune import report

    out = Path(config.out).resolve()
    base = config.base_config(out=str(out))
    metric, epochs = config.objective(), base.total_epochs
    sized = config.trial_sizing(ray.cluster_resources())
    base = base.replace_flat(cpus_per_worker=sized.cpus_per_worker)
    concurrency = sized.max_concurrent_trials
    store = inspect_store(base.features, base.semantic_modality, base.val_fraction)
    logger.info(f"{base.features}: {split_description(store)}")
    check_objective(metric, store)
    fixed = {k: v for k, v in base.to_flat().items() if k != "out"}
    # Worker groups recorded by an earlier driver of this sweep (killed, or its trials still
    # running when it died) belong to no live trial: Ray 2.60 can leave them holding CPUs.
    stale = sum(release_placement_groups(path) for path in out.glob(f"trials/*/{PLACEMENT_GROUPS}"))
    if stale:
        logger.info(f"released {stale} worker placement group(s) left by an earlier run of {out}")
    datasets = prepare_datasets(
        base.features, base.semantic_modality, config.materialize, base.val_fraction
    )
    trainable = tune.with_resources(
        tune.with_parameters(_sweep_trial, base=fixed, root=str(out), datasets=datasets),
        trial_resources(base, sized.trial_cpus),
    )
    tune_config = tune.TuneConfig(
        metric=metric,
        mode="max",
        scheduler=_scheduler(config, epochs),
        search_alg=_search_algorithm(config, concurrency),
        num_samples=config.num_samples,
        trial_dirname_creator=_trial_dirname,
    )
    run_config = tune.RunConfig(
        storage_path=str(out),
        name="tune",
        failure_config=tune.FailureConfig(max_failures=1),
        callbacks=[ReleaseWorkerGroups(str(out))],
    )
    results, restored = fit_or_restore(
        trainable,
        path=out / "tune",
        param_space=search_space(config.space),
        tune_config=tune_config,
        run_config=run_config,
    )
    rows = [report.trial_row(result, metric, list(config.space)) for result in results]
    rows.sort(key=lambda row: (row["status"] != "completed", -(row[metric] or -1.0), row["trial"]))
    report.write_table(rows, out / "results", title=f"Sweep of {len(rows)} trials, by {metric}")
    best = _export_best(rows, out, metric)
    report.plot_metric_vs_params(rows, list(config.space), metric, out / "plots" / "params.png")
    report.plot_trial_curves(rows, metric, out / "plots" / "learning_curves.png", config.top_trials)
    summary = {
        "out": str(out),
        "best": {k: v for k, v in best.items() if k != "history"},
        "best_model": str(out / "best" / "model"),
        "metric": metric,
        "trials": len(rows),
        "status": {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}},
        "restored": restored,
        "max_concurrent_trials": concurrency,
        "resources": asdict(sized),
        "config": asdict(config),
    }
    atomic_write_json(out / "summary.json", summary, default=str)
    return summary
