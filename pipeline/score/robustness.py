"""Cross-camera robustness: accuracy of trained models on test videos under simulated shifts.

    summary = run_robustness(RobustnessConfig(models=("runs/baseline", "runs/full"),
                                              videos="data/videos", annotations=(...), out="rb"))

The paper's claim (DESIGN.md) is that privileged text/audio makes the visual path generalise
across cameras. This job scores the same labelled test videos through every camera shift of
:data:`pipeline.score.shifts.SHIFTS` at each severity, plus the clean videos, with every model:

1. Features, once per (S3D set-up, condition) and shared by all models with that set-up: the
   extraction job's pipeline (:func:`pipeline.score.batch.extract_visual`: decode tasks with the
   shift applied to each clip -> S3D actor pool) into ``OUT/_features/<set-up>/<condition>/``.
2. Predictions, per model for all conditions at once (one actor pool start): the scoring
   job's CRIF actor pool (:func:`pipeline.score.batch.scoring_pipeline`) into atomic parts under
   ``OUT/_predictions/<model>/``, keyed ``<condition>/<video_id>``.
3. ``OUT/robustness.json`` (every number), ``OUT/robustness.md`` (tables) and
   ``OUT/robustness.png`` (accuracy vs severity per shift, one line per model).

Every stage writes atomic parts and skips what is already there, so a rerun resumes. A video
that cannot be decoded under a shift counts as a wrong answer (and in ``failed``).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import store
from pipeline.artifact import ExtractorSetup, model_id, read_checkpoint_info, resolve_model_dir
from pipeline.common.atomic import atomic_write_json, atomic_write_text
from pipeline.common.configs import check_choices
from pipeline.common.plots import pyplot
from pipeline.common.tables import format_number, markdown_table
from pipeline.extract.job import Decoder
from pipeline.ingest.manifest import SplitScheme, read_msrvtt
from pipeline.score.batch import extract_visual, scoring_pipeline, visual_description
from pipeline.score.shifts import SEVERITIES, SHIFTS, shift_tag, validate_shift
from pipeline.store import Split

__all__ = [
    "QUICK",
    "RobustnessConfig",
    "conditions",
    "plot_robustness",
    "robustness_markdown",
    "run_robustness",
    "summarize",
]

logger = logging.getLogger(__name__)

CLEAN = "clean"
QUICK = {"severities": (2,), "limit": 24}  # --quick: the middle severity, 24 test videos


@dataclass(frozen=True)
class RobustnessConfig:
    """One robustness run; jobs/robustness.py maps its flags 1:1 onto these fields (the field
    comments are the flags' help; ``--model`` is repeated, once per model)."""

    # a RUN_DIR (or model directory) to compare; repeat the flag for each model
    models: tuple[str, ...] = field(metadata={"flag": "--model", "append": True})
    videos: str  # the video directory, or a feature store made from it (dataset.json)
    out: str  # output directory: robustness.md, robustness.png, robustness.json
    annotations: tuple[str, ...] = ()  # MSR-VTT JSON with the labels; default: the store's own
    split: Split = "test"  # the split whose videos are scored
    split_scheme: SplitScheme = "official"  # MSR-VTT split scheme of the annotations
    # camera shifts simulated (pipeline/score/shifts.py)
    shifts: tuple[str, ...] = field(default=tuple(SHIFTS), metadata={"choices": tuple(SHIFTS)})
    severities: tuple[int, ...] = SEVERITIES  # severities of every shift
    seed: int = 0  # seed of the random parts of the shifts
    limit: int | None = None  # only the first N videos of the split
    quick: bool = False  # severity 2 only and 24 videos (explicit values win)
    s3d_weights: str | None = None  # a local S3D .pth when the models were trained on one
    clip_batch_size: int = 4  # S3D clips per model call
    # video decoder: auto (the fastest installed backend that decodes each file), pyav,
    # decord or torchcodec
    decoder: Decoder = "auto"
    decode_timeout: float = 60.0  # seconds a video may take to open, and at least to decode
    video_batch_size: int = 64  # videos per CRIF model call
    model_actors: int | None = None  # actors per model (default: GPUs when present, else 1)
    use_gpu: bool | None = None  # run the models on GPUs (default: when the cluster has them)

    def __post_init__(self):
        if not self.models:
            raise ValueError("give at least one model (RUN_DIR)")
        check_choices(self)
        for name in self.shifts:
            validate_shift({"name": name, "severity": 1})
        for severity in self.severities:
            validate_shift({"name": "blur", "severity": severity})
        if self.quick:
            if self.severities == SEVERITIES:
                object.__setattr__(self, "severities", QUICK["severities"])
            if self.limit is None:
                object.__setattr__(self, "limit", QUICK["limit"])


def conditions(config: RobustnessConfig) -> list[dict | None]:
    """None (clean) then every shift at every severity, as shift descriptions."""
    return [None] + [
        validate_shift({"name": name, "severity": severity, "seed": config.seed})
        for name in config.shifts
        for severity in sorted(set(config.severities))
    ]


def _condition_name(shift: dict | None) -> str:
    return CLEAN if shift is None else shift_tag(shift)


@dataclass(frozen=True)
class _Model:
    name: str  # display name: the run directory's name
    directory: Path  # the exported model
    identifier: str  # crif-<weights hash>
    setup: ExtractorSetup  # the S3D set-up its features must have
    class_names: list[str]
    ablation: str


def _load_models(config: RobustnessConfig) -> list[_Model]:
    models, names = [], set()
    for run in config.models:
        directory = resolve_model_dir(run)
        info = read_checkpoint_info(directory)
        if info.get("task", "single_label") != "single_label":
            raise ValueError(f"{run}: robustness reports single-label accuracy, not {info['task']}")
        name = base = Path(run).resolve().name
        suffix = 1
        while name in names:
            suffix += 1
            name = f"{base}-{suffix}"
        names.add(name)
        ablation = info.get("train_config", {}).get("ablation", "?")
        setup = ExtractorSetup.from_description(visual_description(info, config.s3d_weights))
        models.append(
            _Model(name, directory, model_id(directory), setup, info["class_names"], ablation)
        )
    return models


def _test_rows(config: RobustnessConfig):
    """(labelled rows of the split with a video file, class names, clean store or None)."""
    source = Path(config.videos)
    metadata = None
    videos, annotations = config.videos, list(config.annotations)
    if (source / store.DATASET_JSON).is_file():  # a feature store: its videos and annotations
        metadata = store.read_dataset_json(source)
        videos = metadata.get("source", {}).get("videos") or ""
        annotations = annotations or list(metadata.get("source", {}).get("annotations", []))
    if not annotations:
        raise ValueError("robustness needs labels: give --annotations (MSR-VTT JSON files)")
    manifest = read_msrvtt(annotations, videos, split_scheme=config.split_scheme)
    rows = [row for row in manifest.rows if row.split == config.split and row.path is not None]
    rows = rows[: config.limit] if config.limit else rows
    if not rows:
        raise ValueError(f"no {config.split} videos with a file under {videos}")
    return rows, list(manifest.class_names), metadata


def _features(config, setup, shift, rows, out: Path, metadata, use_gpu) -> list[str]:
    """Feature files of one condition: the given store's when clean and matching, or extracted."""
    if shift is None and metadata is not None:
        try:
            setup.check_matches(ExtractorSetup.from_metadata(metadata, "visual"), "")
            return store.list_parquet_files(config.videos)
        except ValueError:
            pass  # another S3D set-up: extract the clean features too
    directory = out / "_features" / f"s3d-{setup.setup_key()}" / _condition_name(shift)
    logger.info(f"[robustness] features: {directory.parent.name} {directory.name}")
    files, _ = extract_visual(
        setup.to_description(),
        rows,
        directory,
        use_gpu=use_gpu,
        shift=shift,
        clip_batch_size=config.clip_batch_size,
        model_actors=config.model_actors,
        decoder=config.decoder,
        decode_timeout=config.decode_timeout,
    )
    return files


def _selector(table, condition: str, wanted: frozenset, done: frozenset):
    """Rows of wanted videos not yet scored, ids keyed ``<condition>/<video_id>``."""
    import pyarrow as pa

    keys = [f"{condition}/{video_id}" for video_id in table.column("video_id").to_pylist()]
    keep = [key.partition("/")[2] in wanted and key not in done for key in keys]
    index = table.schema.get_field_index("video_id")
    table = table.set_column(index, "video_id", pa.array(keys, pa.string()))
    return table.filter(pa.array(keep, pa.bool_()))


def _predict(config, model: _Model, files: dict[str, list[str]], wanted: set, out: Path, use_gpu):
    """Score every condition with one CRIFScorer pool; parts keyed by condition/video_id."""
    import ray

    parts = out / "_predictions" / model.identifier
    done = frozenset(_prediction_keys(parts))
    datasets = []
    for condition, condition_files in files.items():
        if not condition_files:
            continue
        ids = pq.read_table(condition_files, columns=["video_id"]).column("video_id").to_pylist()
        if {f"{condition}/{i}" for i in ids if i in wanted} <= done:
            continue  # nothing left to score: no pipeline
        dataset = ray.data.read_parquet(condition_files).select_columns(["video_id", "visual"])
        datasets.append(
            dataset.map_batches(
                _selector,
                batch_format="pyarrow",
                fn_kwargs={"condition": condition, "wanted": frozenset(wanted), "done": done},
            )
        )
    if not datasets:
        return parts
    dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    dataset = scoring_pipeline(
        dataset,
        model.directory,
        video_batch_size=config.video_batch_size,
        model_actors=config.model_actors,
        use_gpu=use_gpu,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows:
            store.atomic_write_table(batch, parts / f"part-{uuid.uuid4().hex}.parquet")
    return parts


def _prediction_keys(parts: Path) -> dict[str, list[str]]:
    """``<condition>/<video_id>`` -> top-k label names, from every part under ``parts``."""
    files = sorted(parts.glob("*.parquet")) if parts.is_dir() else []
    if not files:
        return {}
    table = pq.read_table(files, columns=["video_id", "top_k_labels"])
    return dict(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def _accuracy(predictions: dict, condition: str, labels: dict[str, int], class_names: list[str]):
    """(top-1, top-5, videos without a prediction) over the labelled videos."""
    top1 = top5 = missing = 0
    for video_id, label in labels.items():
        names = predictions.get(f"{condition}/{video_id}")
        if names is None:
            missing += 1
            continue
        top1 += names[0] == class_names[label]
        top5 += class_names[label] in names[:5]
    return top1 / len(labels), top5 / len(labels), missing


def run_robustness(config: RobustnessConfig) -> dict:
    """Run the job; return the summary (per-model clean and corrupted accuracy, paths)."""
    import ray

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    models = _load_models(config)
    rows, class_names, metadata = _test_rows(config)
    labels = {row.video_id: row.label for row in rows}
    for model in models:  # predictions are compared with the labels by class name
        unknown = {class_names[label] for label in labels.values()} - set(model.class_names)
        if unknown:
            raise ValueError(f"{model.directory}: the model has no class {sorted(unknown)}")
    use_gpu = (
        ray.cluster_resources().get("GPU", 0) > 0 if config.use_gpu is None else config.use_gpu
    )
    setups = {model.setup.setup_key(): model.setup for model in models}
    logger.info(
        f"[robustness] {len(models)} model(s), {len(setups)} S3D set-up(s), {len(rows)} videos"
    )
    shifts = conditions(config)
    files = {key: {} for key in setups}  # set-up -> condition -> feature files
    for shift in shifts:  # features once per S3D set-up and condition, shared by the models
        for key, setup in setups.items():
            files[key][_condition_name(shift)] = _features(
                config, setup, shift, rows, out, metadata, use_gpu
            )
    results = []
    for model in models:
        setup = files[model.setup.setup_key()]
        parts = _predict(config, model, setup, set(labels), out, use_gpu)
        predictions = _prediction_keys(parts)
        for shift in shifts:
            condition = _condition_name(shift)
            acc1, acc5, failed = _accuracy(predictions, condition, labels, class_names)
            results.append(_result(model, shift, acc1, acc5, failed, len(labels)))
            logger.info(f"[robustness] {model.name} {condition}: acc1 {acc1:.3f}")
    return _write_report(config, models, results, out)


def _result(model: _Model, shift: dict | None, acc1, acc5, failed, videos) -> dict:
    name, severity = (CLEAN, 0) if shift is None else (shift["name"], shift["severity"])
    parameter = None if shift is None else SHIFTS[name].levels[severity - 1]
    return {
        "model": model.name,
        "ablation": model.ablation,
        "shift": name,
        "severity": severity,
        "parameter": parameter,
        "setting": "-" if shift is None else SHIFTS[name].setting.format(parameter),
        "acc1": acc1,
        "acc5": acc5,
        "videos": videos,
        "failed": failed,
    }


def _write_report(config: RobustnessConfig, models, results: list[dict], out: Path) -> dict:
    summary = summarize(results)
    document = {
        "config": {**asdict(config), "out": str(out)},
        "models": {m.name: {"path": str(m.directory), "ablation": m.ablation} for m in models},
        "results": results,
        "summary": summary,
    }
    atomic_write_json(out / "robustness.json", document)
    markdown = robustness_markdown(results, summary)
    atomic_write_text(out / "robustness.md", markdown)
    plot_robustness(results, out / "robustness.png")
    return {
        "report": str(out / "robustness.md"),
        "plot": str(out / "robustness.png"),
        "json": str(out / "robustness.json"),
        "summary": summary,
    }


# ------------------------------------------------------------------------- the report


def summarize(results: list[dict]) -> dict[str, dict]:
    """Per model: clean top-1, mean top-1 over every shifted condition, relative drop."""
    summary = {}
    for model in dict.fromkeys(result["model"] for result in results):
        mine = [result for result in results if result["model"] == model]
        clean = next((r["acc1"] for r in mine if r["shift"] == CLEAN), float("nan"))
        shifted = [r["acc1"] for r in mine if r["shift"] != CLEAN]
        mean = sum(shifted) / len(shifted) if shifted else float("nan")
        summary[model] = {
            "ablation": mine[0]["ablation"],
            "clean_acc1": clean,
            "mean_corrupted_acc1": mean,
            "relative_drop": (clean - mean) / clean if clean > 0 else float("nan"),
            "conditions": len(shifted),
        }
    return summary


def robustness_markdown(results: list[dict], summary: dict[str, dict]) -> str:
    """Two Markdown tables: top-1 (drop from clean) per shift and severity, then per model.

    A number that is undefined (the relative drop of a model whose clean top-1 is 0, a model
    without clean or shifted results) is written 'n/a'.
    """
    models = list(summary)
    clean = {model: summary[model]["clean_acc1"] for model in models}
    by_condition: dict[tuple, dict] = {}
    for result in results:
        key = (result["shift"], result["severity"])
        by_condition.setdefault(key, {"setting": result["setting"]})[result["model"]] = result
    rows = []
    for (shift, severity), cells in by_condition.items():
        values = []
        for model in models:
            result = cells.get(model)
            if result is None:
                values.append("")
            elif shift == CLEAN:
                values.append(f"{result['acc1']:.3f}")
            else:
                drop = format_number(result["acc1"] - clean[model], "+.3f")
                values.append(f"{result['acc1']:.3f} ({drop})")
        rows.append([shift, severity, cells["setting"], *values])
    per_condition = markdown_table(
        ["shift", "severity", "setting", *models],
        rows,
        align=("left", "right", "left", *["right"] * len(models)),
    )
    per_model = markdown_table(
        ["model", "ablation", "clean", "mean corrupted", "relative drop"],
        [
            [
                model,
                numbers["ablation"],
                format_number(numbers["clean_acc1"]),
                format_number(numbers["mean_corrupted_acc1"]),
                format_number(numbers["relative_drop"], ".1%"),
            ]
            for model, numbers in summary.items()
        ],
        align=("left", "left", "right", "right", "right"),
    )
    return "Top-1 accuracy (drop from clean in brackets).\n\n" + per_condition + "\n" + per_model


def plot_robustness(results: list[dict], path: str | Path) -> Path:
    """Accuracy vs severity, one panel per shift (severity 0 = clean), one line per model."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shifts = list(dict.fromkeys(r["shift"] for r in results if r["shift"] != CLEAN))
    models = list(dict.fromkeys(r["model"] for r in results))
    columns = min(3, max(1, len(shifts)))
    rows = max(1, -(-len(shifts) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for axis, shift in zip(axes.flat, shifts, strict=False):
        for model in models:
            points = sorted(
                (r["severity"], r["acc1"])
                for r in results
                if r["model"] == model and r["shift"] in (shift, CLEAN)
            )
            axis.plot(*zip(*points, strict=True), marker="o", label=model)
        axis.set(title=shift, xlabel="severity (0 = clean)", ylabel="top-1", ylim=(0, 1.02))
        axis.set_xticks(sorted({r["severity"] for r in results}))
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(shifts) :]:
        axis.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
