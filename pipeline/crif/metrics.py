"""Evaluation metrics on numpy arrays; the names are the keys of a run's ``metrics.json``.

    classification_metrics(logits, labels, "single_label")  # {"acc1", "acc5", "macro_f1"}
    classification_metrics(logits, multi_hot, "multi_label")
    # {"precision@1", "precision@5", "recall@1", "recall@5"}

Rankings use a stable sort of the negated logits, so ties go to the lower class index.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "classification_metrics",
    "multi_label_metrics",
    "single_label_metrics",
]


def _as_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) array, got shape {logits.shape}")
    return logits


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """(N, k) class indices, best first."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def single_label_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-k accuracy (k = min(5, C)) and macro F1.

    Macro F1 averages F1 = 2TP / (2TP + FP + FN) over the classes that occur in the labels
    or in the top-1 predictions (a class seen in neither has no defined F1).
    """
    logits = _as_logits(logits)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    top = _top_k(logits, min(5, logits.shape[1]))  # (N, k)
    predictions = top[:, 0]
    f1_scores = []
    for c in np.union1d(labels, predictions):
        true_positive = np.sum((predictions == c) & (labels == c))
        false_positive = np.sum((predictions == c) & (labels != c))
        false_negative = np.sum((predictions != c) & (labels == c))
        f1_scores.append(2 * true_positive / (2 * true_positive + false_positive + false_negative))
    return {
        "acc1": float(np.mean(predictions == labels)),
        "acc5": float(np.mean((top == labels[:, None]).any(axis=1))),
        "macro_f1": float(np.mean(f1_scores)),
    }


def multi_label_metrics(logits: np.ndarray, labels_multi_hot: np.ndarray) -> dict[str, float]:
    """precision@k = mean over samples of hits in the top k / k; recall@k = mean over samples
    with at least one positive of hits in the top k / positives (0.0 when no sample has one).
    k = 1 and 5, each capped at C (names keep 1 and 5)."""
    logits = _as_logits(logits)
    relevant = np.asarray(labels_multi_hot) > 0
    if relevant.shape != logits.shape:
        raise ValueError(f"labels must have shape {logits.shape}, got {relevant.shape}")
    positives = relevant.sum(axis=1)  # (N,)
    metrics = {}
    for k in (1, 5):
        k_used = min(k, logits.shape[1])
        hits = np.take_along_axis(relevant, _top_k(logits, k_used), axis=1).sum(axis=1)  # (N,)
        metrics[f"precision@{k}"] = float(np.mean(hits / k_used))
        with_positives = positives > 0
        recall = hits[with_positives] / positives[with_positives]
        metrics[f"recall@{k}"] = float(recall.mean()) if recall.size else 0.0
    return {name: metrics[name] for name in ("precision@1", "precision@5", "recall@1", "recall@5")}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    if task == "single_label":
        return single_label_metrics(logits, labels)
    if task == "multi_label":
        return multi_label_metrics(logits, labels)
    raise ValueError(f"task must be single_label or multi_label, got {task!r}")
