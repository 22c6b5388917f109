"""pipeline/crif/metrics.py against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.crif.metrics import classification_metrics, multi_label_metrics, single_label_metrics

DESCENDING = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # ranks classes 0, 1, 2, 3, 4, 5
ASCENDING = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # ranks classes 5, 4, 3, 2, 1, 0
SHIFTED = [1.0, 6.0, 5.0, 4.0, 3.0, 2.0]  # ranks classes 1, 2, 3, 4, 5, 0


def test_single_label_hand_computed():
    logits = np.array([DESCENDING, DESCENDING, SHIFTED, ASCENDING])
    labels = np.array([0, 5, 2, 5])
    # top-1 predictions 0, 0, 1, 5: hits on rows 0 and 3 -> acc1 = 2/4
    # top-5 sets miss only row 1 (class 5 ranks 6th) -> acc5 = 3/4
    # F1 = 2TP / (2TP + FP + FN) over classes {0, 1, 2, 5} (labels or predictions):
    #   0: TP 1, FP 1 (row 1), FN 0 -> 2/3;  1: TP 0, FP 1 -> 0;  2: TP 0, FN 1 -> 0
    #   5: TP 1, FN 1 (row 1) -> 2/3;  macro = (2/3 + 0 + 0 + 2/3) / 4 = 1/3
    metrics = single_label_metrics(logits, labels)
    assert metrics == pytest.approx({"acc1": 0.5, "acc5": 0.75, "macro_f1": 1.0 / 3.0})


def test_single_label_top_k_capped_at_number_of_classes():
    logits = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    metrics = single_label_metrics(logits, np.array([2, 1]))  # k = min(5, 3) = 3: always a hit
    assert metrics["acc1"] == 0.0
    assert metrics["acc5"] == 1.0
    assert metrics["macro_f1"] == 0.0  # classes {0, 1, 2}: no true positive anywhere


def test_single_label_ties_go_to_the_lower_class():
    metrics = single_label_metrics(np.zeros((2, 4)), np.array([0, 3]))
    assert metrics["acc1"] == 0.5


def test_single_label_macro_f1_matches_scikit_learn():
    f1_score = pytest.importorskip("sklearn.metrics").f1_score
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, size=50)
    expected = f1_score(labels, logits.argmax(axis=1), average="macro")
    assert single_label_metrics(logits, labels)["macro_f1"] == pytest.approx(expected)


def test_single_label_rejects_bad_shapes():
    with pytest.raises(ValueError):
        single_label_metrics(np.zeros((3, 4)), np.zeros(2))
    with pytest.raises(ValueError):
        single_label_metrics(np.zeros((0, 4)), np.zeros(0))


def test_multi_label_hand_computed():
    logits = np.array([DESCENDING, ASCENDING, DESCENDING])
    labels = np.zeros((3, 6))
    labels[0, [0, 2, 5]] = 1  # top-1 {0}: 1 hit; top-5 {0..4}: hits 0, 2
    labels[1, [1]] = 1  # top-1 {5}: 0 hits; top-5 {5, 4, 3, 2, 1}: hit 1
    # row 2 has no positive: counts in precision (0 hits), not in recall
    # precision@1 = (1 + 0 + 0) / 3;  precision@5 = (2/5 + 1/5 + 0) / 3
    # recall@1 = (1/3 + 0) / 2;  recall@5 = (2/3 + 1/1) / 2
    metrics = multi_label_metrics(logits, labels)
    assert list(metrics) == ["precision@1", "precision@5", "recall@1", "recall@5"]
    assert metrics == pytest.approx(
        {"precision@1": 1 / 3, "precision@5": 1 / 5, "recall@1": 1 / 6, "recall@5": 5 / 6}
    )


def test_multi_label_without_positives_has_zero_recall():
    metrics = multi_label_metrics(np.array([DESCENDING]), np.zeros((1, 6)))
    assert metrics == {"precision@1": 0.0, "precision@5": 0.0, "recall@1": 0.0, "recall@5": 0.0}


def test_multi_label_k_capped_at_number_of_classes():
    # C = 2, k = 5 -> 2: both positives retrieved, precision@5 = 2/2
    metrics = multi_label_metrics(np.array([[1.0, 2.0]]), np.array([[1, 1]]))
    assert metrics["precision@5"] == 1.0
    assert metrics["recall@5"] == 1.0
    assert metrics["recall@1"] == 0.5


def test_multi_label_rejects_bad_shapes():
    with pytest.raises(ValueError):
        multi_label_metrics(np.zeros((2, 3)), np.zeros((2, 4)))


def test_classification_metrics_dispatch():
    logits = np.array([DESCENDING])
    assert set(classification_metrics(logits, np.array([0]), "single_label")) == {
        "acc1",
        "acc5",
        "macro_f1",
    }
    multi = classification_metrics(logits, np.eye(6)[[0]], "multi_label")
    assert multi == multi_label_metrics(logits, np.eye(6)[[0]])
    with pytest.raises(ValueError):
        classification_metrics(logits, np.array([0]), "regression")


def test_single_label_top_5_ties_go_to_the_lower_classes():
    # 7 tied classes: the top 5 are 0..4 (scikit-learn's own rule would pick 6..2)
    metrics = single_label_metrics(np.zeros((2, 7)), np.array([0, 6]))
    assert metrics["acc5"] == 0.5


def test_single_label_matches_a_plain_numpy_ranking_with_ties():
    rng = np.random.default_rng(1)
    logits = rng.integers(0, 3, size=(200, 9)).astype(float)  # many ties
    labels = rng.integers(0, 9, size=200)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    metrics = single_label_metrics(logits, labels)
    assert metrics["acc1"] == pytest.approx(np.mean(top[:, 0] == labels))
    assert metrics["acc5"] == pytest.approx(np.mean((top == labels[:, None]).any(axis=1)))


def test_single_label_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="labels must lie in"):
        single_label_metrics(np.zeros((2, 3)), np.array([0, 3]))
