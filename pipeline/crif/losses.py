"""CRIF losses as pure functions: tensors in, a scalar tensor out (paper section III, eqs. 10-22).

    output = model(visual, visual_mask, semantic, semantic_mask)
    terms = crif_losses(output, labels, config, LossWeights(), stage=None)  # end to end
    terms["total"].backward()

Alignment functions take ``source`` (the visual side, the student) and ``target`` (the
semantic side, the teacher), both (n, d). Where the code's defaults and the paper differ, each
is an option (README, "CRIF: the paper and the code"):

- ``config.semantic_gradients``: "stop" detaches the target in L_sim and L_align, so the
  alignment pulls the video towards the semantic features and never the reverse; "flow" is
  the paper's symmetric form (eqs. 10, 13), both sides move.
- ``config.semantic_loss``: L_semantic (the classifier on t_c, the content alignment
  module's "pair" classification constraint of section III-C) is part of L_1; off gives
  eq. 20 exactly (the semantic branch then learns from the alignment terms alone, if they flow).
- ``weights.recon_distance``: L_recon is eq. 15, the classification loss on t_r; a positive
  weight adds mse(t_r, t) (t detached under "stop") as a term of its own, L_recon_distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.crif.model import CRIFConfig, CRIFOutput, ablation_branches, training_stages

__all__ = [
    "ALIGNMENT_FUNCTIONS",
    "LossWeights",
    "alignment_loss",
    "classification_loss",
    "coral_loss",
    "crif_losses",
    "kl_alignment",
    "l2_alignment",
    "ssan_alignment",
]


def _check_features(source: Tensor, target: Tensor, *, paired: bool) -> None:
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(f"need (n, d) features of one width, got {source.shape}, {target.shape}")
    if paired and source.shape[0] != target.shape[0]:
        raise ValueError(f"need paired rows, got {source.shape[0]} and {target.shape[0]}")


def _zero(*tensors: Tensor) -> Tensor:
    """A zero that stays in the autograd graph (DDP sees every parameter take part)."""
    return sum(tensor.sum() for tensor in tensors) * 0.0


def _covariance(features: Tensor) -> Tensor:
    centred = features - features.mean(dim=0, keepdim=True)  # (n, d)
    return centred.T @ centred / (features.shape[0] - 1)  # (d, d)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """Deep CORAL (Sun & Saenko 2016; paper eq. 10): ||C_s - C_t||_F^2 / (4 d^2).

    Covariances are centred and divided by n - 1; fewer than 2 rows on either side gives 0.
    """
    _check_features(source, target, paired=False)
    if source.shape[0] < 2 or target.shape[0] < 2:
        return _zero(source, target)
    d = source.shape[1]
    return (_covariance(source) - _covariance(target)).pow(2).sum() / (4 * d * d)


def l2_alignment(source: Tensor, target: Tensor) -> Tensor:
    """Batch mean of ||s_i - t_i||_2 (also L_sim = ||x_a - t_a||_2, eq. 13)."""
    _check_features(source, target, paired=True)
    return torch.linalg.vector_norm(source - target, dim=1).mean()


def kl_alignment(source: Tensor, target: Tensor) -> Tensor:
    """KL(softmax(target) || softmax(source)), summed over features, averaged over the batch.

    The target (semantic) distribution is the reference, as in distillation: the visual
    side is penalised where the semantic side puts mass and it does not.
    """
    _check_features(source, target, paired=True)
    log_source = F.log_softmax(source, dim=1)
    log_target = F.log_softmax(target, dim=1)
    return F.kl_div(log_source, log_target, log_target=True, reduction="batchmean")


def _label_weights(labels: Tensor, num_classes: int) -> Tensor:
    """(n,) class ids or (n, C) multi-hot -> (n, C) float membership."""
    if labels.dim() == 1:
        return F.one_hot(labels.long(), num_classes).float()
    if labels.dim() == 2 and labels.shape[1] == num_classes:
        return labels.float()
    raise ValueError(f"labels must be (n,) ids or (n, {num_classes}) multi-hot, got {labels.shape}")


def ssan_alignment(source: Tensor, target: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Class-centroid alignment (SSAN, Li et al. 2020): the mean over classes present in the
    batch of ||mu_k(source) - mu_k(target)||_2^2, mu_k the mean of the rows labelled k.

    Single-label ids or multi-hot rows (a row counts towards each of its classes); classes
    absent from the batch are skipped; a batch with no labelled row gives 0.
    """
    _check_features(source, target, paired=True)
    weights = _label_weights(labels, num_classes).to(source.dtype)  # (n, C)
    counts = weights.sum(dim=0)  # (C,)
    present = counts > 0
    if not present.any():
        return _zero(source, target)
    weights = weights[:, present] / counts[present]  # (n, K) columns sum to 1
    difference = weights.T @ (source - target)  # (K, d) = mu_k(source) - mu_k(target)
    return difference.pow(2).sum(dim=1).mean()


ALIGNMENT_FUNCTIONS = {
    "coral": coral_loss,
    "l2": l2_alignment,
    "kl": kl_alignment,
    "ssan": ssan_alignment,
}


def alignment_loss(
    name: str,
    source: Tensor,
    target: Tensor,
    labels: Tensor | None = None,
    num_classes: int | None = None,
) -> Tensor:
    if name not in ALIGNMENT_FUNCTIONS:
        raise ValueError(f"alignment must be one of {sorted(ALIGNMENT_FUNCTIONS)}, got {name!r}")
    if name == "ssan":
        if labels is None or num_classes is None:
            raise ValueError("ssan alignment needs labels and num_classes")
        return ssan_alignment(source, target, labels, num_classes)
    return ALIGNMENT_FUNCTIONS[name](source, target)


def classification_loss(
    logits: Tensor, labels: Tensor, task: str, pos_weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy on (B,) class ids (single_label) or BCE-with-logits on (B, C) multi-hot
    labels with an optional (C,) ``pos_weight`` (multi_label); both batch means."""
    if task == "single_label":
        if pos_weight is not None:
            raise ValueError("pos_weight applies to multi_label only")
        if labels.dim() != 1:
            raise ValueError(f"single_label needs (B,) class ids, got {tuple(labels.shape)}")
        return F.cross_entropy(logits, labels.long())
    if task == "multi_label":
        if labels.shape != logits.shape:
            raise ValueError(f"multi_label needs {tuple(logits.shape)} multi-hot labels")
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=pos_weight)
    raise ValueError(f"task must be single_label or multi_label, got {task!r}")


@dataclass(frozen=True)
class LossWeights:
    alpha_sim: float = 1.0
    alpha_align: float = 1.0
    beta: float = 0.5
    gamma: float = 0.5
    recon_distance: float = 0.0  # weight of mse(t_r, t) in L_2 (not in the paper: 0)


def _require(tensor: Tensor | None, name: str, ablation: str) -> Tensor:
    if tensor is None:
        raise ValueError(f"ablation {ablation!r} needs output.{name}, which is None")
    return tensor


def crif_losses(
    output: CRIFOutput,
    labels: Tensor,
    config: CRIFConfig,
    weights: LossWeights,
    *,
    stage: int | None = None,
    pos_weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """Named loss terms and ``total`` (eqs. 19-22).

    L_1 = L_class [+ L_semantic] + alpha_sim L_sim (eq. 20);  L_2 = L_recon + alpha_align
    L_align [+ recon_distance L_recon_distance] (eq. 21), L_recon the CE of t_r's head
    (eq. 15);  L_mix on the fused logits (eq. 18). stage None (end to end): total = L_1 +
    beta L_2 + gamma L_mix (eq. 22); stage 1, 2: L_1, L_2; stage 3: L_mix, plus L_refit (the
    visual head's L_class on the features as they are) when the model predicts with that head.
    Terms the ablation lacks are omitted; so are those that need the semantic side when the
    output has none (semantic input not given, e.g. on validation batches).
    """
    if stage not in (None, 1, 2, 3):
        raise ValueError(f"stage must be None, 1, 2 or 3, got {stage!r}")
    branches = ablation_branches(config.ablation)

    def classify(logits: Tensor) -> Tensor:
        return classification_loss(logits, labels, config.task, pos_weight)

    def teacher(tensor: Tensor) -> Tensor:
        return tensor.detach() if config.semantic_gradients == "stop" else tensor

    terms: dict[str, Tensor] = {}
    has_semantic = "semantic" in branches and output.t is not None
    if stage in (None, 1):
        terms["L_class"] = terms["L_1"] = classify(output.logits_visual)
        if has_semantic:
            if config.semantic_loss:
                terms["L_semantic"] = classify(output.logits_semantic)
                terms["L_1"] = terms["L_1"] + terms["L_semantic"]
            terms["L_sim"] = l2_alignment(output.x_a, teacher(output.t_a))
            terms["L_1"] = terms["L_1"] + weights.alpha_sim * terms["L_sim"]
    if stage in (None, 2):
        stage_two = []
        if "recon" in branches:
            logits_recon = _require(output.logits_recon, "logits_recon", config.ablation)
            terms["L_recon"] = classify(logits_recon)
            stage_two.append(terms["L_recon"])
            if has_semantic and weights.recon_distance > 0:
                terms["L_recon_distance"] = F.mse_loss(output.t_r, teacher(output.t))
                stage_two.append(weights.recon_distance * terms["L_recon_distance"])
        if has_semantic:
            whole = config.align_target == "whole"
            source, target = (output.x_a, output.t_a) if whole else (output.x_c, output.t_c)
            terms["L_align"] = alignment_loss(
                config.align_fn, source, teacher(target), labels, config.num_classes
            )
            stage_two.append(weights.alpha_align * terms["L_align"])
        if stage_two:
            terms["L_2"] = sum(stage_two[1:], stage_two[0])
    if stage in (None, 3) and "fusion" in branches:
        terms["L_mix"] = classify(_require(output.logits_fused, "logits_fused", config.ablation))
    stages = training_stages(config)
    refit = stage == 3 and 3 in stages and config.head == "visual"
    if refit:
        terms["L_refit"] = classify(output.logits_visual)

    if stage is None:
        total = terms["L_1"]
        if "L_2" in terms:
            total = total + weights.beta * terms["L_2"]
        if "L_mix" in terms:
            total = total + weights.gamma * terms["L_mix"]
    elif stage not in stages:
        raise ValueError(f"stage {stage} has no loss terms under ablation {config.ablation!r}")
    elif stage == 3:
        parts = [terms[name] for name in ("L_mix", "L_refit") if name in terms]
        total = sum(parts[1:], parts[0])
    else:  # a stage of only semantic terms on an output without semantic side: 0 in the graph
        total = terms.get({1: "L_1", 2: "L_2"}[stage], output.logits.sum() * 0.0)
    if has_semantic:  # every semantic parameter stays in the graph (DDP), whatever the options
        total = total + _zero(output.logits_semantic)
    terms["total"] = total
    return terms
