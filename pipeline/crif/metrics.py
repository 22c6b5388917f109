"""Evaluation metrics on numpy arrays; the names are the keys of a run's ``metrics.json``.

    classification_metrics(logits, labels, "single_label")  # {"acc1", "acc5", "macro_f1"}
    classification_metrics(logits, multi_hot, "multi_label")
    # {"precision@1", "precision@5", "recall@1", "recall@5"}

Top-k accuracy and macro F1 come from scikit-learn (``top_k_accuracy_score``, ``f1_score``);
precision@k and recall@k of multi-label tasks have no scikit-learn equivalent and are computed
here. Rankings break ties towards the lower class index everywhere, as ``np.argmax`` and the
scoring job's predictions do; scikit-learn's top-k breaks them towards the higher index, so it
is given the classes in reverse order (see ``_top_k_accuracy``) and its values equal ours.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

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


def _top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` best classes, ties to the lower index."""
    classes = logits.shape[1]
    if k >= classes:  # every class is in the top k (scikit-learn warns and says the same)
        return 1.0
    # scikit-learn ranks tied scores by descending class index; reversing the class order
    # makes its rule ours (ties go to the lower original index).
    reversed_labels = classes - 1 - labels
    return top_k_accuracy_score(reversed_labels, logits[:, ::-1], k=k, labels=np.arange(classes))


def single_label_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-k accuracy (k = min(5, C)) and macro F1.

    Macro F1 averages F1 = 2TP / (2TP + FP + FN) over the classes that occur in the labels
    or in the top-1 predictions (a class seen in neither has no defined F1).
    """
    logits = _as_logits(logits)
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {np.unique(labels)}")
    predictions = _top_k(logits, 1)[:, 0]
    seen = np.union1d(labels, predictions)
    return {
        "acc1": float(accuracy_score(labels, predictions)),
        "acc5": float(_top_k_accuracy(logits, labels, min(5, logits.shape[1]))),
        "macro_f1": float(
            f1_score(labels, predictions, average="macro", labels=seen, zero_division=0)
        ),
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
