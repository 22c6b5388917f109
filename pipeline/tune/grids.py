"""The paper's experiment grids as Tune grid searches: tables in the paper's layout, t-SNE.

    summary = run_experiments(ExperimentConfig(out="outputs/exp", grid="all", quick=True))
    python jobs/experiments.py --features outputs/features --out outputs/exp --grid alignment

- ``ablation`` (Tables III/IV): Baseline, +Align, +Inference, +Fusion (the full CRIF).
- ``alignment`` (Table V): None (the plain backbones: alpha_sim = alpha_align = 0 and no
  feature distance, so no alignment signal of any kind), and {Align: the whole shared
  feature x_a/t_a, Clip: the key part x_c/t_c} x {L2-Norm, KL-D, DeepCoral, SSAN}.
- ``backbones`` (Table II): GRU and ViLT x {Baseline, +Align}; the Semantic row is the +Align
  run's semantic classifier, which only L_semantic trains (alignment terms detach it).
- ``all``: the three; cells with the same training config share one run.

Each run x seed is a Tune trial running a whole ``train.run_training`` (RUN_DIR layout under
``OUT/<grid>/runs/<run>/seed-<s>``), then :func:`evaluate_run`: the model's own heads on the
test split (video only) and, for fused columns, a fusion head of those features (eq. 16 over
them) trained with L_mix on the train split's frozen features. Columns that need
the semantic input at test time are marked † and scored where it exists (val when the test
split has none, as in the cross-camera benchmark).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from ray import tune

from pipeline.artifact import load_model
from pipeline.common.atomic import atomic_write_json, atomic_write_text
from pipeline.common.configs import check_choices
from pipeline.common.tables import markdown_table, mean_and_spread
from pipeline.crif.metrics import classification_metrics
from pipeline.synthetic.crosscam import BenchmarkData, full_plan, generate_benchmark_store
from pipeline.train.data import inspect_store
from pipeline.train.trainer import TrainConfig, run_training
from pipeline.tune import report
from pipeline.tune.report import SEMANTIC_OUTPUTS, collect_outputs, tsne_figure, with_semantic
from pipeline.tune.sweep import (
    TRAIN_FIELDS,
    fit_or_restore,
    local_path,
    prepare_datasets,
    size_trials,
    train_in_task,
    trial_resources,
)

__all__ = [
    "GRIDS",
    "GRID_CHOICES",
    "GridName",
    "Cell",
    "ExperimentConfig",
    "evaluate_run",
    "grid_table",
    "run_experiments",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    name: str  # directory and Tune grid value
    labels: tuple[str, ...]  # the row labels in the paper's table
    train: dict[str, Any]  # TrainConfig fields of this cell


_FUNCTIONS = {"l2": "L2-Norm", "kl": "KL-D", "coral": "DeepCoral", "ssan": "SSAN"}
_STRATEGIES = {"whole": "Align (whole feature)", "clip": "Clip (key part)"}


def _alignment_cells() -> tuple[Cell, ...]:
    cells = [
        Cell(
            "none",
            ("None", "-"),
            {"ablation": "full", "alpha_sim": 0.0, "alpha_align": 0.0, "recon_distance": 0.0},
        )
    ]
    for target, strategy in _STRATEGIES.items():
        for function, label in _FUNCTIONS.items():
            train = {"ablation": "full", "align_target": target, "align_fn": function}
            cells.append(Cell(f"{target}-{function}", (strategy, label), train))
    return tuple(cells)


GRIDS: dict[str, tuple[Cell, ...]] = {
    "ablation": (
        Cell("baseline", ("Baseline",), {"ablation": "baseline"}),
        Cell("align", ("+Align",), {"ablation": "align"}),
        Cell("inference", ("+Inference",), {"ablation": "inference"}),
        Cell("fusion", ("+Fusion",), {"ablation": "full"}),
    ),
    "alignment": _alignment_cells(),
    "backbones": tuple(
        Cell(f"{backbone}-{ablation}", (backbone,), {"backbone": backbone, "ablation": ablation})
        for backbone in ("gru", "vilt")
        for ablation in ("baseline", "align")
    ),
}
# A grid of GRIDS, or "all" of them (tests keep the two in step).
GridName = Literal["ablation", "alignment", "backbones", "all"]
GRID_CHOICES = get_args(GridName)
# (before, after) alignment: the two models of the t-SNE figure.
TSNE_MODELS = {
    "ablation": ("baseline", "align"),
    "alignment": ("none", "clip-coral"),
    "backbones": ("gru-baseline", "gru-align"),
}


def quick_train() -> dict[str, Any]:
    """Quick: the benchmark's training recipe (configs/crosscam-full.yaml, read when asked for,
    not at import) on a smaller store, local mode; a run's time is mostly start-up."""
    return {**full_plan().train, "num_workers": 0, "cpus_per_worker": 0.25}


QUICK_BENCHMARK = BenchmarkData(
    num_classes=10, train_cameras=3, test_cameras=2, videos_per_camera=100, clips=4
)
FUSED = {"V+S": ("x_c", "t_c"), "V+I": ("x_c", "t_r"), "S+I": ("t_c", "t_r")}
FUSED["V+S+I"] = ("x_c", "t_c", "t_r")


@dataclass(frozen=True)
class ExperimentConfig:
    """One grid; ``jobs/experiments.py`` maps its flags onto these fields."""

    out: str  # output directory (re-run with the same one to resume)
    # the paper's table: ablation, alignment, backbones, or all (cells shared between them)
    grid: GridName
    features: str | None = None  # feature store (omit with --quick: the synthetic benchmark)
    quick: bool = False  # small fast settings on a synthetic benchmark store in OUT/benchmark
    seeds: int | None = None  # seeds per cell (default 3, 2 with --quick)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields of every cell
    # CPUs of a trial's own process (default: 0.25)
    trial_cpus: float | None = None
    # CPUs kept free for Ray Data's read tasks (default: 1, 1 in 16 on large clusters)
    data_cpus: float | None = None
    max_concurrent_trials: int | None = None  # (default: derived from the cluster's resources)
    # read the store into memory once for all cells (default: when it is below 1 GiB)
    materialize: bool | None = None
    tsne_classes: int = 5  # classes drawn in the t-SNE figure
    tsne_per_class: int = 100  # videos per class in the t-SNE figure
    tsne_pairs: int = 20  # visual-semantic pairs joined by lines in the t-SNE figure
    address: str | None = None  # Ray cluster the grid ran on (recorded; set by --address)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.features is None and not self.quick:
            raise ValueError("give features (a feature store), or quick for the benchmark")
        unknown = set(self.train) - TRAIN_FIELDS
        if unknown:
            raise ValueError(f"unknown TrainConfig fields in train: {sorted(unknown)}")

    @property
    def grids(self) -> tuple[str, ...]:
        return tuple(GRIDS) if self.grid == "all" else (self.grid,)

    @property
    def seed_count(self) -> int:
        return self.seeds or (2 if self.quick else 3)

    def base_config(self, features: str, out: str) -> TrainConfig:
        train = {**(quick_train() if self.quick else {}), **self.train}
        return TrainConfig.from_flat(features=features, out=out, **train)


# ---------------------------------------------------------------------------- evaluation


FUSION_EPOCHS = 200  # full-batch Adam steps of a Table V fusion head


def _fusion_head(
    train: dict, test: dict, names: tuple[str, ...], task: str, config, seed: int = 0
) -> dict | None:
    """Table V's fused columns: a fusion head (``model.FusionHead``, eq. 16 over ``names``)
    trained with L_mix on the frozen features of the train split, scored on ``test``."""
    import torch

    from pipeline.crif.losses import classification_loss
    from pipeline.crif.model import FusionHead

    def features(outputs):
        keep = np.isfinite(np.concatenate([outputs[n] for n in names], axis=1)).all(axis=1)
        tensors = [torch.from_numpy(outputs[n][keep]).float() for n in names]
        labels = torch.from_numpy(outputs["labels"][keep])
        return tensors, labels.long() if task == "single_label" else labels.float()

    (x_train, y_train), (x_test, y_test) = features(train), features(test)
    if len(y_test) == 0 or len(y_train) < 2:
        return None
    torch.manual_seed(seed)
    widths = tuple(x.shape[1] for x in x_train)
    head = FusionHead(widths, config.shared_dim, config.num_classes, config.dropout)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-3)
    head.train()
    for _ in range(FUSION_EPOCHS):
        optimizer.zero_grad(set_to_none=True)
        classification_loss(head(*x_train), y_train, task).backward()
        optimizer.step()
    head.eval()
    with torch.no_grad():
        logits = head(*x_test).numpy()
    return classification_metrics(logits, y_test.numpy(), task)


def evaluate_run(model_dir: str | Path, features: str) -> dict[str, Any]:
    """Metrics of each head and fused set; video-only ones on test, † ones where possible."""
    model, info = load_model(model_dir)
    store = inspect_store(features, info["semantic"])
    task = info["task"]
    splits = {name: collect_outputs(model, store, name) for name in ("train", "val", "test")}
    test = splits["test"]
    if not test:
        raise ValueError(f"{features}: no test rows to evaluate {model_dir} on")
    semantic_split = "test"
    if store.semantic and not test["has_semantic"].any():
        semantic_split = "val"  # privileged information: this store has none at test time
    columns = {"CRIF": classification_metrics(test["logits"], test["labels"], task)}
    columns["Visual"] = classification_metrics(test["logits_visual"], test["labels"], task)
    used = {"CRIF": "test", "Visual": "test"}
    if "logits_recon" in test:
        columns["Inference"] = classification_metrics(test["logits_recon"], test["labels"], task)
        used["Inference"] = "test"
    semantic_rows = with_semantic(splits[semantic_split], True) if "t" in test else {}
    if semantic_rows and len(semantic_rows["labels"]):
        logits = semantic_rows["logits_semantic"]
        columns["Semantic"] = classification_metrics(logits, semantic_rows["labels"], task)
        used["Semantic"] = semantic_split
    for name, parts in FUSED.items():
        if not all(part in test for part in parts):
            continue
        needs_semantic = any(part in SEMANTIC_OUTPUTS for part in parts)
        evaluation = semantic_rows if needs_semantic else test
        train = with_semantic(splits["train"], needs_semantic)
        metrics = _fusion_head(train, evaluation, parts, task, model.config) if evaluation else None
        if metrics is not None:
            columns[name] = metrics
            used[name] = semantic_split if needs_semantic else "test"
    counts = {name: int(len(outputs.get("labels", []))) for name, outputs in splits.items()}
    return {"columns": columns, "splits": used, "rows": counts, "task": task}


# ---------------------------------------------------------------------------- tables

_METRICS = {
    "single_label": (("acc1", "Acc-1"), ("acc5", "Acc-5")),
    "multi_label": (
        ("precision@1", "Pre-1"),
        ("precision@5", "Pre-5"),
        ("recall@1", "Recall-1"),
        ("recall@5", "Recall-5"),
    ),
}
TABLE_V_COLUMNS = ("Visual", "Semantic", "Inference", "V+S", "V+I", "S+I", "V+S+I", "CRIF")
NEEDS_SEMANTIC = frozenset({"Semantic", "V+S", "S+I", "V+S+I"})  # marked † in the tables
_BACKBONE_ROWS = (
    ("Visual modality backbone", "baseline", "CRIF"),
    ("Semantic modality backbone†", "align", "Semantic"),
    ("Cross-modal alignment", "align", "CRIF"),
)


def _cell_value(records: list[dict], cell: str, column: str, metric: str) -> str:
    """'mean ± std' of ``column``/``metric`` over the seeds of ``cell``; '-' when absent."""
    values = [
        r["columns"][column][metric]
        for r in records
        if r["cell"] == cell and column in r["columns"]
    ]
    return mean_and_spread(values)


def grid_table(grid: str, records: list[dict], task: str) -> str:
    """The Markdown table of ``grid`` in the paper's layout (mean ± std over seeds)."""
    metrics = _METRICS[task]
    if grid == "ablation":
        header = ["Method", *(label for _, label in metrics)]
        rows = [
            [cell.labels[0], *(_cell_value(records, cell.name, "CRIF", m) for m, _ in metrics)]
            for cell in GRIDS[grid]
        ]
    elif grid == "alignment":
        metric = metrics[0][0]
        header = ["Strategy", "Function"]
        header += [f"{c}†" if c in NEEDS_SEMANTIC else c for c in TABLE_V_COLUMNS]
        rows, previous = [], None
        for cell in GRIDS[grid]:
            strategy = "" if cell.labels[0] == previous else cell.labels[0]
            previous = cell.labels[0]
            values = [_cell_value(records, cell.name, c, metric) for c in TABLE_V_COLUMNS]
            rows.append([strategy, cell.labels[1], *values])
    else:
        header = ["Methods", "Model", *(label for _, label in metrics)]
        rows = []
        for method, ablation, column in _BACKBONE_ROWS:
            for backbone, model in (("gru", "GRU"), ("vilt", "ViLT")):
                name = f"{backbone}-{ablation}"
                values = [_cell_value(records, name, column, m) for m, _ in metrics]
                rows.append([method if backbone == "gru" else "", model, *values])
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------- the grid


def _cell_trial(
    params: dict, *, base: dict, root: str, cells: dict[str, dict], datasets: dict | None
) -> None:
    """One cell x seed: a whole training run, then its evaluation, reported to Tune."""
    cell, seed = params["cell"], int(params["seed"])
    run_dir = Path(root) / "runs" / cell / f"seed-{seed}"
    config = TrainConfig.from_flat(**{**base, **cells[cell], "seed": seed, "out": str(run_dir)})
    if config.resources.num_workers == 0:
        train_in_task(config, datasets)  # local mode cannot run in a Tune trial's own process
    else:
        run_training(config, datasets=datasets)
    evaluation = evaluate_run(run_dir / "model", config.features)
    atomic_write_json(run_dir / "evaluation.json", evaluation)
    tune.report({"cell": cell, "seed": seed, "run_dir": str(run_dir), **evaluation})


def _trial_dirname(trial) -> str:
    return f"{trial.config['cell']}-seed{trial.config['seed']}-{trial.trial_id}"


def _benchmark_store(root: Path) -> str:
    if not (root / "dataset.json").is_file():
        generate_benchmark_store(root, QUICK_BENCHMARK)
    return str(root)


def _notes(config: ExperimentConfig, base: TrainConfig, records: list[dict], failed: list) -> str:
    """The lines under a table: what was measured where, seeds, epochs, failures."""
    rows = records[0]["rows"] if records else {}
    lines = [
        f"Test split: {rows.get('test', '?')} videos, scored on the video alone (CRIF: the "
        f"model's own prediction). Mean ± sample std over {config.seed_count} seed(s), "
        f"{base.total_epochs} epochs, backbone {base.model.backbone} unless named; "
        f"store {base.features}."
    ]
    if config.grid != "ablation":
        split = next((r["splits"]["Semantic"] for r in records if "Semantic" in r["splits"]), "")
        lines.append(
            f"† uses the semantic input at test time: scored on the {split or 'test'} rows that "
            "have it" + (" (this store's test split has none)." if split == "val" else ".")
        )
    if config.grid == "alignment":
        lines.append(
            "V+S, V+I, S+I, V+S+I: a fusion head (eq. 16 over x_c, t_c, t_r) trained with "
            "L_mix on the train split's frozen features. Visual, Semantic, Inference: the "
            "model's own heads."
        )
    if failed:
        lines.append("Failed cells: " + "; ".join(failed))
    return "\n".join(f"{line}\n" for line in lines)


def grid_runs(grids: tuple[str, ...], fixed: dict[str, Any]) -> tuple[dict, dict]:
    """(run name -> TrainConfig fields, (grid, cell) -> run name) for the cells of ``grids``.

    Cells whose whole training config is the same share one run: +Fusion is Clip + DeepCoral
    on the full CRIF, and GRU's backbone rows are the ablation's Baseline and +Align."""
    runs: dict[str, dict] = {}
    run_of: dict[tuple[str, str], str] = {}
    by_config: dict[str, str] = {}
    for grid in grids:
        for cell in GRIDS[grid]:
            key = json.dumps({**fixed, **cell.train}, sort_keys=True, default=str)
            name = by_config.setdefault(key, cell.name)
            runs[name] = cell.train
            run_of[(grid, cell.name)] = name
    return runs, run_of


def _fit_runs(config: ExperimentConfig, base: TrainConfig, runs: dict, out: Path) -> tuple:
    """Every run x seed as a Tune trial (grid search); (results, restored, concurrency)."""
    import ray

    cluster = ray.cluster_resources()
    given = {**(quick_train() if config.quick else {}), **config.train}
    sized = size_trials(
        cluster, base, cpus_per_worker=given.get("cpus_per_worker"),
        trial_cpus=config.trial_cpus, data_cpus=config.data_cpus,
        max_concurrent_trials=config.max_concurrent_trials,
    )  # fmt: skip
    logger.info(sized.describe(max(base.resources.num_workers, 1), cluster))
    base = base.replace_flat(cpus_per_worker=sized.cpus_per_worker)
    concurrency = sized.max_concurrent_trials
    fixed = {k: v for k, v in base.to_flat().items() if k != "out"}
    datasets = prepare_datasets(base.features, base.semantic, config.materialize, base.val_fraction)
    trainable = tune.with_resources(
        tune.with_parameters(_cell_trial, base=fixed, root=str(out), cells=runs, datasets=datasets),
        trial_resources(base, sized.trial_cpus),
    )
    results, restored = fit_or_restore(
        trainable,
        path=out / "tune",
        param_space={
            "cell": tune.grid_search(list(runs)),
            "seed": tune.grid_search(list(range(config.seed_count))),
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a cell's trial ends cleanly: its process can take the next
        ),
        run_config=tune.RunConfig(
            storage_path=str(out), name="tune", failure_config=tune.FailureConfig(max_failures=1)
        ),
    )
    return results, restored, concurrency


def _write_grid(config, base, grid: str, records: list, run_of: dict, failed: list, out: Path):
    """OUT/<grid>.md (the paper's layout) and OUT/<grid>_tsne.png; (table, figure) paths."""
    cells = [
        {**r, "cell": cell.name}
        for cell in GRIDS[grid]
        for r in records
        if r["cell"] == run_of[(grid, cell.name)]
    ]
    task = records[0]["task"] if records else "single_label"
    table = out / f"{grid}.md"
    notes = _notes(replace(config, grid=grid), base, records, failed)
    atomic_write_text(table, grid_table(grid, cells, task) + "\n" + notes)
    before, after = (
        out / "runs" / run_of[(grid, name)] / "seed-0" / "model" for name in TSNE_MODELS[grid]
    )
    if not (before.is_dir() and after.is_dir()):
        return table, None
    figure = tsne_figure(
        before, after, base.features, out / f"{grid}_tsne.png", classes=config.tsne_classes,
        per_class=config.tsne_per_class, pairs=config.tsne_pairs, names=TSNE_MODELS[grid],
    )  # fmt: skip
    return table, figure


def run_experiments(config: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) the grid(s); OUT/<grid or all>/: <grid>.md, <grid>_tsne.png,
    results.csv (every number), runs/<run>/seed-<s>/ and summary.json."""
    out = Path(config.out).resolve() / config.grid
    features = local_path(config.features or _benchmark_store(out.parent / "benchmark"))
    base = config.base_config(features, str(out))
    fixed = {k: v for k, v in base.to_flat().items() if k != "out"}
    runs, run_of = grid_runs(config.grids, fixed)
    results, restored, concurrency = _fit_runs(config, base, runs, out)
    records = [r.metrics for r in results if r.error is None and "columns" in (r.metrics or {})]
    failed = [f"{r.config['cell']} seed {r.config['seed']}: {str(r.error).splitlines()[0][:160]}"
              for r in results if r.error is not None]  # fmt: skip
    long_rows = [
        {"run": r["cell"], "seed": r["seed"], "column": column, "split": r["splits"][column],
         "metric": metric, "value": value}
        for r in records
        for column, values in r["columns"].items()
        for metric, value in values.items()
    ]  # fmt: skip
    report.write_table(long_rows, out / "results", title=f"{config.grid}: every number")
    written = {g: _write_grid(config, base, g, records, run_of, failed, out) for g in config.grids}
    summary = {
        "grid": config.grid,
        "tables": {g: str(table) for g, (table, _) in written.items()},
        "tsne": {g: str(figure) if figure else None for g, (_, figure) in written.items()},
        "results": str(out / "results.csv"), "runs": len(runs), "seeds": config.seed_count,
        "trials": len(results), "failed": failed, "restored": restored, "features": features,
        "max_concurrent_trials": concurrency, "config": asdict(config),
    }  # fmt: skip
    atomic_write_json(out / "summary.json", summary, default=str)
    return summary
