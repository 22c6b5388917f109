"""Every figure's matplotlib goes through here: the Agg backend is chosen once, in ``pyplot``.

    plt = pyplot()                     # matplotlib.pyplot, Agg backend (no display needed)
    plot_learning_curves(document["history"], "outputs/run/learning_curves.png")

Plotting code elsewhere (sweep and grid figures, the robustness plot) calls ``pyplot()``
instead of importing matplotlib itself, so no module picks a backend of its own and a job on
a headless node never tries to open a display. matplotlib is imported on first use only.

``plot_learning_curves``: the learning curves of a training run as a PNG.
Left: the training loss terms per epoch (log scale); right: the validation metrics per epoch.
Dashed vertical lines mark the stage boundaries of a multistage run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_learning_curves", "pyplot"]


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (set here, once)."""
    import matplotlib

    matplotlib.use("Agg")  # idempotent; the one place the project chooses a backend
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw ``history`` (the per-epoch entries of metrics.json) into ``path``."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [entry["epoch"] + 1 for entry in history]
    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for name in sorted({key for entry in history for key in entry["train"]}):
        values = [entry["train"].get(name, float("nan")) for entry in history]
        style = dict(linewidth=2.5, color="black") if name == "total" else {}
        losses.plot(epochs, [max(v, 1e-8) for v in values], marker=".", label=name, **style)
    losses.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training losses")
    for name in sorted({key for entry in history for key in entry["val"]}):
        values = [entry["val"].get(name, float("nan")) for entry in history]
        metrics.plot(epochs, values, marker="o", label=name)
    metrics.set(xlabel="epoch", ylabel="visual-only metric", title="validation", ylim=(0, 1.02))
    for previous, entry in zip(history, history[1:], strict=False):
        if entry["stage"] != previous["stage"]:
            for axis in (losses, metrics):
                axis.axvline(entry["epoch"] + 0.5, linestyle="--", color="grey")
    for axis in (losses, metrics):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
