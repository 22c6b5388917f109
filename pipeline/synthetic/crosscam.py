"""A synthetic cross-camera benchmark where the privileged modality should help, and the runner.

The setting of the paper (section I): a visual classifier trained on some IoT cameras must work
on cameras it never saw. Features are generated directly in the store format (1024-d
"visual" clips, 64-d "text" captions), from one latent content vector per video:

    z       = mu_y + within_class * eps                 content: class mean + instance detail
    text_j  = W_t z + text_noise * eta_j                clean: the class is clear from the text
    clip_f  = gain_cam * (P z + scene_strength * s_b + visual_noise * nu_f) + offset_cam

``P`` embeds the content weakly in 1024 dimensions; ``s_b`` is the direction of the video's
background scene b, a strong and clean cue. In the TRAINING cameras scene and class co-occur
(b = y with probability ``scene_bias``, as kitchens film cooking); in the TEST cameras, which
are new cameras (new per-dimension gains and offsets), the scene is independent of the class.
A visual-only model can fit the training cameras through the scene shortcut and loses it on
the test cameras; the semantic side carries only the content z, including its instance
detail, which the scene cannot predict, so aligning the video with it rewards the camera- and
scene-invariant content directions. Whether a method gets that benefit is measured, not built
in: every method sees the same videos, labels and epochs, and scores on video alone.

Test rows have no text (privileged information is absent at inference); val rows come from
the training cameras. ``run_benchmark`` trains every ablation x backbone x seed through
``pipeline.train.trainer.train_loop`` (Train V2 local mode, one process per cell) and tabulates
Acc-1 / Acc-5 on the unseen cameras. Every ablation is trained end to end (eq. 22); the
ablations in ``BenchmarkPlan.multistage`` (the full CRIF) are also trained with the paper's
three stages, as rows of their own: ``full (multistage)``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.common.atomic import atomic_write_json, atomic_write_text
from pipeline.common.configs import check_choices, load_config
from pipeline.common.logs import logging_to_file
from pipeline.common.tables import MISSING, SPREAD, markdown_table, mean_std
from pipeline.crif.model import (
    ABLATIONS,
    BACKBONES,
    Ablation,
    Backbone,
    SemanticGradients,
    Strategy,
)
from pipeline.store import atomic_write_table, store_schema, validate_store, write_dataset_json

__all__ = [
    "BenchmarkData",
    "BenchmarkPlan",
    "benchmark_markdown",
    "full_plan",
    "generate_benchmark_store",
    "hard_plan",
    "method_name",
    "plan_methods",
    "quick_plan",
    "run_benchmark",
    "summarise",
]

logger = logging.getLogger(__name__)

VISUAL_DIM = 1024


@dataclass(frozen=True)
class BenchmarkData:
    """Parameters of the generator; the store is a function of them."""

    num_classes: int = 10
    train_cameras: int = 6
    test_cameras: int = 3
    videos_per_camera: int = 200
    test_videos_per_camera: int | None = None  # videos of each test camera (None: as above)
    val_fraction: float = 0.1  # of the training cameras' videos
    clips: int = 6  # T_v
    captions: int = 2  # text rows per video
    content_dim: int = 32
    text_dim: int = 64
    within_class: float = 1.0  # instance detail relative to the class-mean spread
    content_strength: float = 0.5  # norm of P z relative to ||z||
    visual_noise: float = 1.0  # per dimension, per clip
    scene_strength: float = 3.0
    scene_bias: float = 0.8  # P(scene = class) in the training cameras
    camera_gain: float = 0.3  # per-dimension gain spread of a camera
    camera_offset: float = 0.5  # per-dimension offset spread of a camera
    text_noise: float = 0.3
    # P(label = the camera's own class) in a training camera; camera k films class k mod C.
    # 0: labels independent of the camera. High values are the hard setting: camera cues
    # predict the class on the seen cameras and fail on new ones.
    camera_class_bias: float = 0.0
    seed: int = 0
    # classes per video: > 1 writes a multi_label store (labels lists), z the sum of their means
    labels_per_video: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.labels_per_video <= self.num_classes:
            raise ValueError(
                f"labels_per_video must be in 1..num_classes, got {self.labels_per_video}"
            )

    @property
    def task(self) -> str:
        """The store's task: multi_label when a video has several classes."""
        return "multi_label" if self.labels_per_video > 1 else "single_label"


def _orthonormal(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    matrix, _ = np.linalg.qr(rng.standard_normal((rows, columns)))
    return matrix[:, :columns].astype(np.float32)  # (rows, columns)


def _world(config: BenchmarkData, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The fixed parts: class means, content embedding, scene directions, text projection."""
    directions = _orthonormal(rng, VISUAL_DIM, config.content_dim + config.num_classes)
    return {
        "means": rng.standard_normal((config.num_classes, config.content_dim)),
        "content": directions[:, : config.content_dim] * config.content_strength,
        "scenes": directions[:, config.content_dim :],  # orthogonal to the content
        "text": rng.standard_normal((config.text_dim, config.content_dim))
        / np.sqrt(config.content_dim),
    }


def _camera_videos(
    config, world, rng, camera: str, test: bool, own_class: int
) -> list[dict[str, Any]]:
    gain = 1.0 + config.camera_gain * rng.standard_normal(VISUAL_DIM)
    offset = config.camera_offset * rng.standard_normal(VISUAL_DIM)
    rows = []
    count = config.videos_per_camera
    if test and config.test_videos_per_camera is not None:
        count = config.test_videos_per_camera
    for index in range(count):
        labels = _draw_labels(config, rng)
        bias = config.camera_class_bias
        if not test and bias > 0 and rng.random() < bias:  # (the stream is unchanged at 0)
            labels = [own_class] + [k for k in labels if k != own_class][: len(labels) - 1]
        label = labels[0]  # the scene follows the first class
        biased = not test and rng.random() < config.scene_bias
        scene = label if biased else int(rng.integers(config.num_classes))
        z = world["means"][labels].sum(0)
        z = z + config.within_class * rng.standard_normal(config.content_dim)
        base = world["content"] @ z + config.scene_strength * world["scenes"][:, scene]
        noise = config.visual_noise * rng.standard_normal((config.clips, VISUAL_DIM))
        visual = gain * (base[None, :] + noise) + offset  # (T_v, 1024)
        text = world["text"] @ z + config.text_noise * rng.standard_normal(
            (config.captions, config.text_dim)
        )  # (N, D_t)
        split = "test" if test else ("val" if rng.random() < config.val_fraction else "train")
        target = {"label": label} if config.task == "single_label" else {"labels": sorted(labels)}
        rows.append(
            {
                "video_id": f"{camera}-{index:04d}",
                "split": split,
                **target,
                "visual": visual.astype(np.float32).tolist(),
                "text": None if test else text.astype(np.float32).tolist(),
                "audio": None,
                "camera": camera,
                "scene": scene,
            }
        )
    return rows


def _draw_labels(config: BenchmarkData, rng: np.random.Generator) -> list[int]:
    """A video's classes: one, or ``labels_per_video`` distinct ones (multi-label)."""
    if config.labels_per_video == 1:  # the single-label stream of draws, unchanged
        return [int(rng.integers(config.num_classes))]
    drawn = rng.choice(config.num_classes, config.labels_per_video, replace=False)
    return [int(k) for k in drawn]


def generate_benchmark_store(root: str | Path, config: BenchmarkData) -> dict[str, Any]:
    """Write the store (one Parquet file per camera group, valid per ``validate_store``);
    ``labels_per_video > 1`` makes it multi_label."""
    root = Path(root)
    rng = np.random.default_rng(config.seed)
    world = _world(config, rng)
    schema = store_schema(config.task)
    schema = schema.append(pa.field("camera", pa.string())).append(pa.field("scene", pa.int32()))
    groups = {
        "train-cameras": (config.train_cameras, False),
        "test-cameras": (config.test_cameras, True),
    }
    for name, (count, test) in groups.items():
        rows = []
        for camera in range(count):
            own = camera % config.num_classes
            rows += _camera_videos(config, world, rng, f"{name[:-8]}cam{camera}", test, own)
        atomic_write_table(pa.Table.from_pylist(rows, schema=schema), root / f"{name}.parquet")
    generator = {"generator": "pipeline.synthetic.crosscam", **dataclasses.asdict(config)}
    write_dataset_json(
        root,
        {
            "name": "cross-camera-synthetic",
            "task": config.task,
            "class_names": [f"class{k}" for k in range(config.num_classes)],
            "modalities": {
                "visual": {
                    "dim": VISUAL_DIM,
                    "extractor": "synthetic",
                    "weights": "none",
                    "config": generator,
                },
                "text": {
                    "dim": config.text_dim,
                    "extractor": "synthetic",
                    "weights": "none",
                    "config": generator,
                },
            },
        },
    )
    return validate_store(root)


# ---------------------------------------------------------------------------- the benchmark


def _quiet_ray_logs() -> None:
    import logging

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray.data", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _run_cell(config_dict: dict[str, Any], datasets: dict[str, Any]) -> dict[str, Any]:
    """One training run through THE trainer, in Train V2 local mode (no worker start-up).

    The cell's log records (the per-epoch progress lines) go to its ``train.log``; the console
    shows only its warnings, so the driver's console stays one line per finished cell.
    """
    import torch

    from pipeline.train.trainer import TrainConfig, build_trainer

    torch.set_num_threads(1)
    _quiet_ray_logs()
    config = TrainConfig.from_flat(**config_dict)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    started = time.time()
    with logging_to_file(Path(config.out) / "train.log"):
        final = build_trainer(config, datasets=datasets).fit().return_value
    return {
        "splits": final["splits"],
        "seconds": round(time.time() - started, 1),
        "history": final["history"],
    }


Method = tuple[str, str, str]  # (ablation, strategy, semantic_gradients)


def method_name(ablation: str, strategy: str, gradients: str = "stop") -> str:
    """The table's row label: the ablation, with the strategy when it is not end to end and
    the semantic gradients when they flow (``full (multistage, flow)``)."""
    notes = [strategy] if strategy != "end2end" else []
    notes += ["flow"] if gradients == "flow" else []
    return f"{ablation} ({', '.join(notes)})" if notes else ablation


def _method_of(result: dict[str, Any]) -> Method:
    """A result's method; results of older files name no strategy or gradients."""
    return (
        result["ablation"],
        result.get("strategy", "end2end"),
        result.get("semantic_gradients", "stop"),
    )


def plan_methods(plan: BenchmarkPlan) -> list[Method]:
    """(ablation, strategy, semantic gradients) of every row, in table order: each ablation
    x strategy x gradient mode (the baseline, which has no semantic side, once per strategy)."""
    methods = []
    for strategy in plan.strategies:
        for ablation in plan.ablations:
            modes = plan.semantic_gradients if ablation != "baseline" else ("stop",)
            methods += [(ablation, strategy, gradients) for gradients in modes]
    return methods


def _cell_configs(out: Path, store: Path, seed: int, plan: BenchmarkPlan) -> list[dict]:
    cells = []
    for backbone in plan.backbones:
        for ablation, strategy, gradients in plan_methods(plan):
            name = "-".join(
                [ablation]
                + ([strategy] if strategy != "end2end" else [])
                + (["flow"] if gradients == "flow" else [])
            )
            config = dict(
                features=str(store),
                out=str(out / "runs" / f"{backbone}-{name}-seed{seed}"),
                backbone=backbone,
                ablation=ablation,
                seed=seed,
                num_workers=0,
                **{**plan.train, "strategy": strategy, "semantic_gradients": gradients},
            )
            cells.append(config)
    return cells


def run_benchmark(out: str | Path, plan: BenchmarkPlan) -> dict[str, Any]:
    """Generate one store per seed, train every cell, write benchmark.{json,md} under out."""
    import ray

    from pipeline.train.data import build_datasets, inspect_store

    out = Path(out)
    _quiet_ray_logs()
    run_cell = ray.remote(num_cpus=1)(_run_cell)
    pending, cells = [], []
    for seed in plan.seeds:
        store = out / f"store-seed{seed}"
        generate_benchmark_store(store, dataclasses.replace(plan.data, seed=seed))
        # Materialised once per seed and shared by every cell (the store is small).
        with_text = {
            k: v.materialize() for k, v in build_datasets(inspect_store(store, "text")).items()
        }
        visual = {k: v.materialize() for k, v in build_datasets(inspect_store(store, None)).items()}
        for config in _cell_configs(out, store, seed, plan):
            shutil.rmtree(config["out"], ignore_errors=True)  # a benchmark run starts afresh
            datasets = visual if config["ablation"] == "baseline" else with_text
            pending.append(run_cell.remote(config, datasets))
            cells.append(config)
    results, configs = [], dict(zip(pending, cells, strict=True))
    while pending:  # report cells as they finish
        (done,), pending = ray.wait(pending, num_returns=1)
        config, result = configs[done], ray.get(done)
        keys = ("backbone", "ablation", "strategy", "semantic_gradients", "seed")
        results.append({**{k: config[k] for k in keys}, **result})
        test = {k: round(v, 3) for k, v in result["splits"].get("test", {}).items()}
        method = method_name(config["ablation"], config["strategy"], config["semantic_gradients"])
        logger.info(
            f"{config['backbone']:>4} {method:<20} seed {config['seed']}: "
            f"test {test} ({result['seconds']}s)",
        )
    summary = summarise(results, plan)
    atomic_write_json(out / "benchmark.json", summary)
    atomic_write_text(out / "benchmark.md", benchmark_markdown(summary))
    return summary


@dataclass(frozen=True)
class BenchmarkPlan:
    """What the benchmark trains: every backbone x ablation x strategy x semantic-gradient
    mode x seed on the same data recipe (the baseline has no semantic side: once per strategy).

    ``train`` holds the TrainConfig fields shared by every cell (the same for all methods).
    The recipes are files: configs/crosscam-full.yaml (:func:`full_plan`),
    configs/crosscam-hard.yaml (:func:`hard_plan`) and configs/crosscam-quick.yaml
    (:func:`quick_plan`).
    """

    data: BenchmarkData = BenchmarkData()  # the generator's parameters (a mapping in a file)
    seeds: tuple[int, ...] = (0,)  # seeds of the data and the training; one store per seed
    backbones: tuple[Backbone, ...] = BACKBONES  # backbones trained
    ablations: tuple[Ablation, ...] = ABLATIONS  # ablations trained
    strategies: tuple[Strategy, ...] = ("end2end", "multistage")  # training strategies
    # semantic gradients in L_sim/L_align: stop (a fixed teacher), flow (the paper's eqs.)
    semantic_gradients: tuple[SemanticGradients, ...] = ("stop",)
    # TrainConfig fields (flat names) shared by every cell
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choices(self)


def full_plan() -> BenchmarkPlan:
    """The benchmark as reported (configs/crosscam-full.yaml): 3 seeds, 12 epochs."""
    return load_config(BenchmarkPlan, "crosscam-full")


def hard_plan() -> BenchmarkPlan:
    """The hard setting (configs/crosscam-hard.yaml): each training camera films mostly its
    own class, few training videos per class; every ablation x strategy x gradient mode."""
    return load_config(BenchmarkPlan, "crosscam-hard")


def quick_plan() -> BenchmarkPlan:
    """A smoke-test plan (configs/crosscam-quick.yaml): small data, one seed, three epochs (one
    per stage of the multistage row; checks the plumbing, not the bar)."""
    return load_config(BenchmarkPlan, "crosscam-quick")


def _statistics(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    spread = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {
        "mean": float(array.mean()),
        "std": spread,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def summarise(results: list[dict[str, Any]], plan: BenchmarkPlan) -> dict[str, Any]:
    """Mean and spread over seeds per backbone x method, and the gain over the baseline."""
    rows = []
    for backbone in plan.backbones:
        mine = [(_method_of(r), r) for r in results if r["backbone"] == backbone]
        # The reference: the visual-only baseline of the plan's first strategy.
        reference = ("baseline", plan.strategies[0], "stop")
        baseline = {
            r["seed"]: r["splits"]["test"]["acc1"] for method, r in mine if method == reference
        }
        for method in plan_methods(plan):
            ablation, strategy, gradients = method
            cells = sorted((r for m, r in mine if m == method), key=lambda r: r["seed"])
            if not cells:
                continue
            test = [r["splits"]["test"] for r in cells]
            row = {
                "backbone": backbone,
                "method": method_name(*method),
                "ablation": ablation,
                "strategy": strategy,
                "semantic_gradients": gradients,
                "seeds": [r["seed"] for r in cells],
                "test_acc1": _statistics([m["acc1"] for m in test]),
                "test_acc5": _statistics([m["acc5"] for m in test]),
                "val_acc1": _statistics([r["splits"]["val"]["acc1"] for r in cells]),
                "seconds": _statistics([r["seconds"] for r in cells]),
            }
            if baseline and all(r["seed"] in baseline for r in cells):
                gains = [r["splits"]["test"]["acc1"] - baseline[r["seed"]] for r in cells]
                row["gain_acc1_vs_baseline"] = _statistics(gains)
            rows.append(row)
    cells = [{k: v for k, v in r.items() if k != "history"} for r in results]
    return {"plan": dataclasses.asdict(plan), "code": _code_version(), "rows": rows, "cells": cells}


def _code_version() -> str | None:
    """The git commit (with "+dirty" for local changes) the numbers were measured with."""
    import subprocess

    def git(*args: str) -> str:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "pipeline", "jobs").strip()
    except OSError:
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def benchmark_markdown(summary: dict[str, Any]) -> str:
    """The table: Acc-1 / Acc-5 on the unseen test cameras, mean ± std over seeds."""
    seeds = summary["plan"]["seeds"]
    lines = [
        f"Unseen-camera test split, visual-only inference; mean {SPREAD} std over seeds {seeds}.",
        f"Training: {summary['plan']['train']}; code {summary.get('code')}.",
        "",
    ]

    def cell(stats: dict[str, float] | None, signed: bool = False) -> str:
        if stats is None:
            return MISSING
        return mean_std(stats["mean"], stats["std"], signed=signed)

    header = ["backbone", "method", "Acc-1", "Acc-5", "Acc-1 gain vs baseline"]
    header.append("val Acc-1 (seen cameras)")
    rows = [
        [
            row["backbone"],
            row["method"],
            cell(row["test_acc1"]),
            cell(row["test_acc5"]),
            cell(row.get("gain_acc1_vs_baseline"), signed=True),
            cell(row["val_acc1"]),
        ]
        for row in summary["rows"]
    ]
    return "\n".join(lines) + "\n" + markdown_table(header, rows)
