"""Tables and figures of sweeps and experiment grids (matplotlib Agg: no display needed).

write_table(rows, "outputs/tune/results", title="...")     # results.csv + results.md
markdown_table(["Method", "Acc-1"], [["Baseline", "0.51 ± 0.01"]])
plot_metric_vs_params(rows, ["alpha_sim", "lr"], "val/acc1", "params.png")
plot_trial_curves(rows, "val/acc1", "learning_curves.png", top=5)
plot_tsne([TsnePanel("(a) before", features, labels)], "tsne.png")  # paper Fig. 3 / 4
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.artifact import load_model
from pipeline.common.atomic import atomic_write_text
from pipeline.common.plots import pyplot
from pipeline.common.tables import markdown_table, mean_and_spread
from pipeline.train.data import PaddedBatchCollate, StoreSplits, inspect_store, select_split

__all__ = [
    "SEMANTIC_OUTPUTS",
    "TsnePanel",
    "collect_outputs",
    "flatten",
    "format_value",
    "markdown_table",
    "mean_and_spread",
    "plot_metric_vs_params",
    "plot_trial_curves",
    "plot_tsne",
    "trial_row",
    "tsne_figure",
    "with_semantic",
    "write_table",
]


def format_value(value: Any) -> str:
    """Floats with 4 decimals (scientific below 1e-3), None as '-', the rest as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)


def write_table(
    rows: list[dict[str, Any]], stem: str | Path, *, title: str, notes: tuple[str, ...] = ()
) -> dict[str, Path]:
    """``stem``.csv (every column) and ``stem``.md (title, table, notes); lists are left out."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    columns = [k for k in rows[0] if not isinstance(rows[0][k], list | dict)] if rows else []
    sheet = io.StringIO(newline="")
    writer = csv.DictWriter(sheet, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), sheet.getvalue())
    body = [[format_value(row.get(column)) for column in columns] for row in rows]
    text = f"### {title}\n\n" + markdown_table(columns, body)
    text += "".join(f"\n{note}\n" for note in notes)
    atomic_write_text(stem.with_suffix(".md"), text)
    return {"csv": stem.with_suffix(".csv"), "markdown": stem.with_suffix(".md")}


def trial_row(result, metric: str, params: list[str]) -> dict[str, Any]:
    """One row of a sweep's results table from a Tune ``Result`` (with its metric history)."""
    last = result.metrics or {}
    trial = last.get("trial_id") or Path(result.path).name  # a restored trial's dir may differ
    frame = result.metrics_dataframe
    history = []
    if frame is not None and metric in frame and "epoch" in frame:
        epochs = frame[frame["final"] == False] if "final" in frame else frame  # noqa: E712
        history = [(int(e), float(v)) for e, v in zip(epochs["epoch"], epochs[metric], strict=True)]
    completed = bool(last.get("final"))
    status = "error" if result.error else ("completed" if completed else "stopped early")
    row = {"trial": trial, "status": status, "epochs": int(last.get("epoch", 0))}
    row.update({name: result.config.get(name) for name in params})
    flat = flatten(last)
    row[metric] = flat.get(metric)
    row[f"best {metric}"] = max((v for _, v in history), default=None)
    row.update({k: v for k, v in flat.items() if k.startswith("test/")})
    row["error"] = str(result.error).splitlines()[0][:200] if result.error else ""
    row["history"] = history
    return row


def flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'val': {'acc1': 1}} -> {'val/acc1': 1}, as Tune names nested metrics."""
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plot_metric_vs_params(
    rows: list[dict[str, Any]], params: list[str], metric: str, path: str | Path
) -> Path:
    """One panel per parameter: each trial's last ``metric`` against its value."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.2), squeeze=False)
    for axis, name in zip(axes[0], params, strict=True):
        for status, style in (("completed", "o"), ("stopped early", "x")):
            points = [
                (row[name], row[metric])
                for row in rows
                if row["status"] == status
                and row[metric] is not None
                and isinstance(row.get(name), int | float)
            ]
            if points:
                axis.scatter(*zip(*points, strict=True), marker=style, label=status)
        values = [row[name] for row in rows if isinstance(row.get(name), int | float)]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_xscale("log")
        axis.set(xlabel=name, ylabel=metric if axis is axes[0][0] else None)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{metric} (last report of each trial)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_trial_curves(
    rows: list[dict[str, Any]], metric: str, path: str | Path, top: int = 5
) -> Path:
    """``metric`` per epoch of every trial; the ``top`` trials (rows in rank order) labelled."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for rank, row in enumerate(rows):
        if not row.get("history"):
            continue
        epochs, values = zip(*row["history"], strict=True)
        if rank < top:
            axis.plot(epochs, values, marker="o", label=f"{row['trial']} ({row['status']})")
        else:
            axis.plot(epochs, values, color="grey", alpha=0.4, linewidth=1)
    axis.set(xlabel="epoch", ylabel=metric, title=f"learning curves, top {top} trials in colour")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass
class TsnePanel:
    """A t-SNE panel: ``features`` (n, d), ``labels`` (n,); ``modality`` (n,) 0 = visual,
    1 = semantic, with row i of each modality the same sample (drawn joined by a line)."""

    title: str
    features: np.ndarray
    labels: np.ndarray
    modality: np.ndarray | None = None


def _embed(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = float(max(2, min(30, (len(features) - 1) // 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(features, dtype=np.float64))


def _draw_panel(axis, panel: TsnePanel, points: np.ndarray, colours: dict) -> None:
    if panel.modality is None:
        for label in np.unique(panel.labels):
            chosen = panel.labels == label
            axis.scatter(*points[chosen].T, s=10, color=colours[label], label=f"class {label}")
        axis.legend(fontsize=7, markerscale=2)
        return
    visual, semantic = points[panel.modality == 0], points[panel.modality == 1]
    for start, end in zip(visual, semantic, strict=True):  # the same video's two features
        axis.plot(*np.stack([start, end]).T, color="lightgrey", linewidth=0.8, zorder=0)
    labels = panel.labels[panel.modality == 0]
    for rows, marker, name in ((visual, "o", "visual"), (semantic, "^", "semantic")):
        axis.scatter(*rows.T, marker=marker, s=60, c=[colours[k] for k in labels],
                     edgecolors="black", linewidths=0.5)  # fmt: skip
        axis.scatter([], [], marker=marker, c="white", edgecolors="black", label=name)
        for (x, y), label in zip(rows, labels, strict=True):  # the class, as in Fig. 4
            axis.annotate(str(label), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7)
    axis.legend(fontsize=7)


def plot_tsne(panels: list[TsnePanel], path: str | Path, *, seed: int = 0) -> Path:
    """2-D t-SNE (scikit-learn) of each panel, side by side; colours by class throughout."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = sorted({int(v) for panel in panels for v in panel.labels})
    palette = plt.get_cmap("tab10")
    colours = {label: palette(i % 10) for i, label in enumerate(classes)}
    columns = min(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.5 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(axis, panel, _embed(panel.features, seed), colours)
        axis.set_title(panel.title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------- model features

SEMANTIC_OUTPUTS = ("t", "t_a", "t_c", "logits_semantic")


def _forward(model, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per-row outputs of one padded batch; semantic outputs are NaN where a row has none."""
    visual, mask = batch["visual"], batch["visual_mask"]
    output = model(visual, mask)  # the visual path: what inference sees
    rows = {k: v for k, v in vars(output).items() if v is not None}  # x: the model's own
    count = visual.shape[0]
    has = torch.zeros(count, dtype=torch.bool)
    if model.semantic_backbone is not None:
        if "semantic_mask" in batch:
            has = batch["semantic_mask"].any(dim=1)
        index = has.nonzero().squeeze(1)
        semantic = None
        if index.numel():
            semantic = model(
                visual[index], mask[index], batch["semantic"][index], batch["semantic_mask"][index]
            )
        widths = model.config.hidden_dim, model.config.shared_dim, model.config.rho
        for name, width in zip(SEMANTIC_OUTPUTS, (*widths, model.config.num_classes), strict=True):
            full = torch.full((count, width), float("nan"))
            if semantic is not None:
                full[index] = getattr(semantic, name).float()
            rows[name] = full
    rows.update(labels=batch["labels"], has_semantic=has)
    return {name: value.float().numpy() for name, value in rows.items()}


def collect_outputs(model, store: StoreSplits, split: str, batch_size: int = 256) -> dict:
    """Every row of ``split``: labels, logits of each head, x, x_a, x_c, t_r, t, t_a, t_c."""
    config = model.config
    collate = PaddedBatchCollate(
        task=config.task,
        num_classes=config.num_classes,
        visual_dim=config.visual_dim,
        semantic_dim=config.semantic_dim if store.semantic else 0,
        max_length=config.max_positions if config.backbone == "vilt" else None,
    )
    wanted = ["video_id", "split", store.label_column, "visual", store.semantic]
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for path in store.files:
        file = pq.ParquetFile(path)
        columns = [c for c in wanted if c and c in file.schema_arrow.names]
        for batch in file.iter_batches(batch_size=batch_size, columns=columns):
            table = select_split(
                pa.Table.from_batches([batch]),
                split=split,
                val_fraction=store.val_fraction,
                label_column=store.label_column,
                semantic=store.semantic,
            )
            if table.num_rows:
                with torch.no_grad():
                    for name, value in _forward(model, collate(table)).items():
                        parts[name].append(value)
    outputs = {name: np.concatenate(values) for name, values in parts.items()}
    if outputs:
        outputs["has_semantic"] = outputs["has_semantic"].astype(bool)
    return outputs


def with_semantic(outputs: dict, semantic: bool) -> dict:
    """The rows of ``outputs`` that have a semantic input (all rows when not ``semantic``)."""
    keep = outputs["has_semantic"] if semantic else np.ones(len(outputs["labels"]), bool)
    return {name: value[keep] for name, value in outputs.items()}


# ---------------------------------------------------------------------------- t-SNE


def _first_label(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.int64) if labels.ndim == 1 else labels.argmax(axis=1)


def tsne_figure(
    before: str | Path, after: str | Path, features: str, path: str | Path, *,
    classes: int = 5, per_class: int = 100, pairs: int = 20, seed: int = 0,
    names: tuple[str, str] = ("before", "after"),
) -> Path:  # fmt: skip
    """Paper Fig. 3 (visual x_c of ``before`` vs ``after`` alignment, test videos of
    ``classes`` random classes) and Fig. 4 (visual vs semantic features of ``pairs`` videos of
    the aligned model: backbone outputs x, t before alignment, shared space x_a, t_a after)."""
    (model_before, _), (model_after, info) = load_model(before), load_model(after)
    store = inspect_store(features, info["semantic"])
    test_before = collect_outputs(model_before, inspect_store(features, None), "test")
    test_after = collect_outputs(model_after, store, "test")
    labels = _first_label(test_after["labels"])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(labels), size=min(classes, len(np.unique(labels))), replace=False)
    index = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in chosen]
    )
    where = f"{len(index)} test videos, {len(chosen)} random classes"
    panels = [
        TsnePanel(f"(a) visual x_c before alignment ({names[0]}); {where}",
                  test_before["x_c"][index], labels[index]),
        TsnePanel(f"(b) visual x_c after alignment ({names[1]})",
                  test_after["x_c"][index], labels[index]),
    ]  # fmt: skip
    split = "test" if test_after["has_semantic"].any() else "val"
    rows = with_semantic(
        test_after if split == "test" else collect_outputs(model_after, store, split), True
    )
    row_labels = _first_label(rows["labels"])
    picked = rng.permutation(np.flatnonzero(np.isin(row_labels, chosen)))[:pairs]
    if len(picked) >= 2:
        modality = np.repeat([0, 1], len(picked))
        both = np.concatenate([row_labels[picked]] * 2)
        for title, visual, semantic in (
            (
                f"(c) visual x vs semantic t before alignment; {len(picked)} {split} videos",
                "x",
                "t",
            ),
            ("(d) visual x_a vs semantic t_a after alignment (shared space)", "x_a", "t_a"),
        ):
            stacked = np.concatenate([rows[visual][picked], rows[semantic][picked]])
            panels.append(TsnePanel(title, stacked, both, modality))
    return plot_tsne(panels, path, seed=seed)
