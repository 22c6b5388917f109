"""Every branch of every loss in pipeline/crif/losses.py against values worked out by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pipeline.crif.losses import (
    ALIGNMENT_FUNCTIONS,
    LossWeights,
    alignment_loss,
    classification_loss,
    coral_loss,
    crif_losses,
    kl_alignment,
    l2_alignment,
    ssan_alignment,
)
from pipeline.crif.model import ALIGN_FUNCTIONS, CRIFConfig, CRIFOutput, build_model

torch.set_num_threads(1)
LN2 = math.log(2.0)


def tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- CORAL

# source columns: (1, 3, 5) mean 3, deviations (-2, 0, 2); (2, 4, 0) mean 2, deviations (0, 2, -2)
#   C_s = [[8, -4], [-4, 8]] / (n - 1 = 2) = [[4, -2], [-2, 4]]
# target columns: (0, 0, 0) variance 0; (0, 1, 2) deviations (-1, 0, 1) variance 1
#   C_t = [[0, 0], [0, 1]]
# ||C_s - C_t||_F^2 = 16 + 4 + 4 + 9 = 33; / (4 d^2 = 16)
CORAL_SOURCE = [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]
CORAL_TARGET = [[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]
CORAL_VALUE = 33.0 / 16.0


def test_coral_hand_computed():
    assert coral_loss(tensor(CORAL_SOURCE), tensor(CORAL_TARGET)).item() == pytest.approx(
        CORAL_VALUE
    )


def test_coral_is_symmetric_and_zero_for_equal_covariances():
    source, target = tensor(CORAL_SOURCE), tensor(CORAL_TARGET)
    assert coral_loss(target, source).item() == pytest.approx(CORAL_VALUE)
    # a shift changes the mean, not the covariance
    assert coral_loss(source, source + 10.0).item() == pytest.approx(0.0, abs=1e-5)


def test_coral_fewer_than_two_rows_is_zero_and_differentiable():
    source = tensor([[1.0, 2.0]]).requires_grad_()
    loss = coral_loss(source, tensor(CORAL_TARGET))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(source.grad, torch.zeros_like(source))
    assert coral_loss(tensor(CORAL_SOURCE), tensor([[0.0, 0.0]])).item() == 0.0


def test_coral_rejects_mismatched_widths():
    with pytest.raises(ValueError):
        coral_loss(torch.zeros(3, 2), torch.zeros(3, 4))


# ----------------------------------------------------------------------------- L2, KL


def test_l2_alignment_hand_computed():
    # row norms: ||(3, 4)|| = 5, ||(0, 0) - (1, 0)|| = 1 -> mean 3
    assert l2_alignment(
        tensor([[3.0, 4.0], [0.0, 0.0]]), tensor([[0.0, 0.0], [1.0, 0.0]])
    ).item() == (pytest.approx(3.0))


def test_l2_alignment_needs_paired_rows():
    with pytest.raises(ValueError):
        l2_alignment(torch.zeros(2, 3), torch.zeros(3, 3))


def test_kl_alignment_hand_computed_and_direction():
    # row 0: softmax(source) = (1/2, 1/2), softmax(target) = (1/4, 3/4)
    #   KL(target || source) = 1/4 ln(1/2) + 3/4 ln(3/2); row 1 identical -> 0; batch mean / 2
    source = tensor([[0.0, 0.0], [1.0, 2.0]])
    target = tensor([[0.0, math.log(3.0)], [1.0, 2.0]])
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert kl_alignment(source, target).item() == pytest.approx(expected, rel=1e-5)
    # the other direction, KL(source || target) = 1/2 ln 2 + 1/2 ln(2/3), is a different number
    reverse = (0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)) / 2
    assert kl_alignment(target, source).item() == pytest.approx(reverse, rel=1e-5)
    assert reverse != pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------- SSAN


def test_ssan_single_label_with_missing_classes():
    # classes 0 and 2 of 4 in the batch; source centroids (2, 0), (0, 2); target (0.5, 0), (0, 0)
    # squared distances 1.5^2 = 2.25 and 4 -> mean 3.125 (classes 1 and 3 skipped)
    source = tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    target = tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    loss = ssan_alignment(source, target, torch.tensor([0, 0, 2]), num_classes=4)
    assert loss.item() == pytest.approx(3.125)


def test_ssan_multi_hot():
    # class 0: row 0 -> centroid (2, 0), distance^2 4; class 1: no row, skipped;
    # class 2: rows 0 and 1 -> centroid (1, 1), distance^2 2; mean 3
    source = tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert ssan_alignment(source, torch.zeros(2, 2), labels, 3).item() == pytest.approx(3.0)


def test_ssan_without_labelled_rows_is_zero_and_differentiable():
    source = torch.ones(2, 2, requires_grad=True)
    loss = ssan_alignment(source, torch.zeros(2, 2), torch.zeros(2, 3), 3)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(source.grad, torch.zeros(2, 2))


def test_ssan_rejects_bad_label_shape():
    with pytest.raises(ValueError):
        ssan_alignment(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 5), 3)


# ----------------------------------------------------------------------------- dispatch


def test_alignment_functions_match_config_choices():
    assert set(ALIGNMENT_FUNCTIONS) == set(ALIGN_FUNCTIONS)


@pytest.mark.parametrize("name", ["coral", "l2", "kl"])
def test_alignment_loss_dispatches(name):
    source, target = tensor(CORAL_SOURCE), tensor(CORAL_TARGET)
    expected = ALIGNMENT_FUNCTIONS[name](source, target)
    assert alignment_loss(name, source, target).item() == pytest.approx(expected.item())


def test_alignment_loss_ssan_needs_labels():
    source, target = tensor(CORAL_SOURCE), tensor(CORAL_TARGET)
    with pytest.raises(ValueError):
        alignment_loss("ssan", source, target)
    labels = torch.tensor([0, 1, 1])
    loss = alignment_loss("ssan", source, target, labels, 2)
    assert loss.item() == pytest.approx(ssan_alignment(source, target, labels, 2).item())


def test_alignment_loss_unknown_name():
    with pytest.raises(ValueError):
        alignment_loss("mmd", torch.zeros(2, 2), torch.zeros(2, 2))


# ----------------------------------------------------------------------------- classification


def test_cross_entropy_hand_computed():
    # softmax(0, ln 3) = (1/4, 3/4): label 1 -> -ln(3/4), label 0 -> -ln(1/4); mean
    logits = tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    loss = classification_loss(logits, torch.tensor([1, 0]), "single_label")
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bce_hand_computed_with_and_without_pos_weight():
    # zero logits: each element -ln(1/2) = ln 2; pos_weight scales the positive term only:
    # (2 ln 2 [positive, weight 2] + ln 2 [negative, weight unused]) / 2 = 1.5 ln 2
    logits, labels = torch.zeros(1, 2), tensor([[1.0, 0.0]])
    assert classification_loss(logits, labels, "multi_label").item() == pytest.approx(LN2)
    weighted = classification_loss(logits, labels, "multi_label", pos_weight=tensor([2.0, 3.0]))
    assert weighted.item() == pytest.approx(1.5 * LN2)


def test_classification_loss_rejects_bad_inputs():
    with pytest.raises(ValueError):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), "single_label", tensor([1.0]))
    with pytest.raises(ValueError):
        classification_loss(torch.zeros(2, 3), torch.zeros(2, 3), "single_label")
    with pytest.raises(ValueError):
        classification_loss(torch.zeros(2, 3), torch.zeros(2, 2), "multi_label")
    with pytest.raises(ValueError):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), "regression")


# ----------------------------------------------------------------------------- crif_losses

WEIGHTS = LossWeights(alpha_sim=0.3, alpha_align=0.7, beta=0.2, gamma=0.9)
LABELS = torch.tensor([0, 1, 1])
# Hand-made output for B = 3, C = 2: every logit is 0, so every classification term is ln 2.
#   L_sim = mean(||(3, 4)||, 0, 0) = 5/3;  L_align = CORAL(x_c, t_c) = 33/16
#   L_recon_distance = mse(t_r, 0) = (1 + 1) / 6 = 1/3 (only with a recon_distance weight)
L_SIM, L_ALIGN, L_DISTANCE = 5.0 / 3.0, 33.0 / 16.0, 1.0 / 3.0
L_1 = LN2 + LN2 + 0.3 * L_SIM  # L_class + L_semantic + alpha_sim L_sim
L_RECON = LN2  # eq. 15: the classification loss on t_r alone
SEMANTIC_FIELDS = ("t_a", "t_c", "t", "logits_semantic")
KEYS_1 = {"L_class", "L_semantic", "L_sim", "L_1"}
KEYS_ALIGN = {"L_align", "L_2"}
KEYS_RECON = {"L_recon"}


def hand_output(ablation: str, *, semantic: bool = True) -> CRIFOutput:
    zeros = torch.zeros(3, 2)
    output = CRIFOutput(
        logits=zeros,
        logits_visual=zeros,
        x_a=tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]),
        x_c=tensor(CORAL_SOURCE),
        t_r=tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]),
        logits_recon=zeros,
        logits_fused=zeros,
        t_a=zeros,
        t_c=tensor(CORAL_TARGET),
        t=zeros,
        logits_semantic=zeros,
    )
    absent = {
        "baseline": ("t_r", "logits_recon", "logits_fused", *SEMANTIC_FIELDS),
        "align": ("t_r", "logits_recon", "logits_fused"),
        "inference": ("logits_fused",),
        "fusion": ("logits_recon",),
        "full": (),
    }[ablation] + (() if semantic else SEMANTIC_FIELDS)
    for name in absent:
        setattr(output, name, None)
    return output


def config_for(ablation: str, **overrides) -> CRIFConfig:
    return CRIFConfig(num_classes=2, ablation=ablation, **overrides)


def run_losses(
    ablation: str, stage=None, semantic=True, weights=WEIGHTS, **overrides
) -> dict[str, torch.Tensor]:
    output = hand_output(ablation, semantic=semantic)
    return crif_losses(output, LABELS, config_for(ablation, **overrides), weights, stage=stage)


def test_crif_losses_full_end_to_end_hand_computed():
    terms = run_losses("full")
    expected = {
        "L_class": LN2,
        "L_semantic": LN2,
        "L_sim": L_SIM,
        "L_1": L_1,
        "L_recon": L_RECON,
        "L_align": L_ALIGN,
        "L_2": L_RECON + 0.7 * L_ALIGN,
        "L_mix": LN2,
        "total": L_1 + 0.2 * (L_RECON + 0.7 * L_ALIGN) + 0.9 * LN2,
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name


def test_recon_distance_is_a_weighted_term_of_its_own():
    weights = dataclasses.replace(WEIGHTS, recon_distance=0.4)
    terms = run_losses("full", weights=weights)
    assert terms["L_recon"].item() == pytest.approx(LN2, rel=1e-5)  # eq. 15 unchanged
    assert terms["L_recon_distance"].item() == pytest.approx(L_DISTANCE, rel=1e-5)
    l_2 = L_RECON + 0.7 * L_ALIGN + 0.4 * L_DISTANCE
    assert terms["L_2"].item() == pytest.approx(l_2, rel=1e-5)
    assert terms["total"].item() == pytest.approx(L_1 + 0.2 * l_2 + 0.9 * LN2, rel=1e-5)


def test_semantic_loss_off_gives_eq_20():
    terms = run_losses("full", semantic_loss=False)
    assert "L_semantic" not in terms
    assert terms["L_1"].item() == pytest.approx(LN2 + 0.3 * L_SIM, rel=1e-5)


@pytest.mark.parametrize(
    ("ablation", "keys", "total"),
    [
        ("baseline", {"L_class", "L_1"}, LN2),
        ("align", KEYS_1 | KEYS_ALIGN, L_1 + 0.2 * 0.7 * L_ALIGN),
        ("inference", KEYS_1 | KEYS_ALIGN | KEYS_RECON, L_1 + 0.2 * (L_RECON + 0.7 * L_ALIGN)),
        ("fusion", KEYS_1 | KEYS_ALIGN | {"L_mix"}, L_1 + 0.2 * 0.7 * L_ALIGN + 0.9 * LN2),
    ],
)
def test_crif_losses_ablation_terms_and_total(ablation, keys, total):
    terms = run_losses(ablation)
    assert set(terms) == keys | {"total"}
    assert terms["total"].item() == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(
    ("ablation", "stage", "keys", "total"),
    [
        ("baseline", 1, {"L_class", "L_1"}, LN2),
        ("align", 1, KEYS_1, L_1),
        ("align", 2, KEYS_ALIGN, 0.7 * L_ALIGN),
        ("inference", 2, KEYS_ALIGN | KEYS_RECON, L_RECON + 0.7 * L_ALIGN),
        ("fusion", 2, KEYS_ALIGN, 0.7 * L_ALIGN),
        ("fusion", 3, {"L_mix"}, LN2),
        ("align", 3, {"L_refit"}, LN2),  # the visual head refit on the stage-2 features
        ("full", 1, KEYS_1, L_1),
        ("full", 2, KEYS_ALIGN | KEYS_RECON, L_RECON + 0.7 * L_ALIGN),
        ("full", 3, {"L_mix"}, LN2),
    ],
)
def test_crif_losses_stages(ablation, stage, keys, total):
    terms = run_losses(ablation, stage=stage)
    assert set(terms) == keys | {"total"}
    assert terms["total"].item() == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize(
    ("ablation", "stage"),
    [("baseline", 2), ("baseline", 3), ("inference", 3), ("full", 4)],
)
def test_crif_losses_stage_without_terms_raises(ablation, stage):
    with pytest.raises(ValueError):
        run_losses(ablation, stage=stage)


def test_crif_losses_align_whole_uses_x_a_and_t_a():
    # CORAL((3,4),(0,0),(0,0) vs zeros): deviations (2,-1,-1), (8/3,-4/3,-4/3)
    #   C = [[6, 8], [8, 32/3]] / 2 = [[3, 4], [4, 16/3]];  ||C||_F^2 = 9 + 32 + 256/9 = 625/9
    terms = run_losses("align", align_target="whole")
    assert terms["L_align"].item() == pytest.approx(625.0 / 9.0 / 16.0, rel=1e-5)


def test_crif_losses_uses_configured_alignment_function():
    terms = run_losses("align", align_fn="l2")
    # x_c - t_c rows (1, 2), (3, 3), (5, -2): norms sqrt(5), sqrt(18), sqrt(29)
    expected = (math.sqrt(5.0) + math.sqrt(18.0) + math.sqrt(29.0)) / 3
    assert terms["L_align"].item() == pytest.approx(expected, rel=1e-5)


def test_crif_losses_without_semantic_input_keeps_visual_terms():
    terms = run_losses("full", semantic=False)
    assert set(terms) == {"L_class", "L_1", "L_recon", "L_2", "L_mix", "total"}
    assert terms["total"].item() == pytest.approx(LN2 + 0.2 * LN2 + 0.9 * LN2, rel=1e-5)


@pytest.mark.parametrize("ablation", ["align", "fusion"])
def test_crif_losses_semantic_only_stage_without_semantic_is_zero(ablation):
    # stage 2 of "align" / "fusion" is alpha_align L_align only, which needs the semantic side
    output = hand_output(ablation, semantic=False)
    output.x_c.requires_grad_(True)
    output.logits_visual.requires_grad_(True)
    terms = crif_losses(output, LABELS, config_for(ablation), WEIGHTS, stage=2)
    assert set(terms) == {"total"}
    assert terms["total"].item() == 0.0
    terms["total"].backward()  # still a graph: DDP sees every parameter take part


def test_crif_losses_missing_branch_output_raises():
    output = hand_output("full")
    output.logits_fused = None
    with pytest.raises(ValueError):
        crif_losses(output, LABELS, config_for("full"), WEIGHTS)


def test_crif_losses_multi_label_pos_weight():
    # multi-hot labels, all logits 0: each classification term is mean(pos_weight * y + (1 - y))
    # * ln 2 over the 3 x 2 elements; labels (1,0),(0,1),(1,1) with pos_weight (3, 1):
    # elements 3, 1, 1, 1, 3, 1 -> 10/6 ln 2
    labels = tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    config = config_for("baseline", task="multi_label")
    terms = crif_losses(hand_output("baseline"), labels, config, WEIGHTS, pos_weight=tensor([3, 1]))
    assert terms["total"].item() == pytest.approx(10.0 / 6.0 * LN2, rel=1e-5)


# ----------------------------------------------------------------------------- gradients


def tiny_model(detach: bool, **overrides):
    config = CRIFConfig(
        num_classes=3, visual_dim=6, semantic_dim=5, hidden_dim=8, shared_dim=8, rho=4,
        dropout=0.0, semantic_gradients="stop" if detach else "flow", **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    output = model(
        torch.randn(4, 3, 6), torch.ones(4, 3, dtype=torch.bool),
        torch.randn(4, 2, 5), torch.ones(4, 2, dtype=torch.bool),
    )  # fmt: skip
    weights = LossWeights(recon_distance=1.0)
    terms = crif_losses(output, torch.tensor([0, 1, 2, 0]), config, weights)
    return model, terms


@pytest.mark.parametrize("detach", [True, False])
def test_semantic_gradients_stop_or_flow_in_alignment_terms(detach):
    model, terms = tiny_model(detach)
    (terms["L_sim"] + terms["L_align"] + terms["L_recon_distance"]).backward()
    visual = [p.grad for p in model.visual_backbone.parameters()]
    semantic = [p.grad for p in model.semantic_backbone.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in visual)
    if detach:
        assert all(g is None for g in semantic)
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in semantic)


def test_without_semantic_loss_or_flow_the_semantic_branch_gets_no_gradient_but_stays_in_graph():
    model, terms = tiny_model(detach=True, semantic_loss=False)
    terms["total"].backward()
    grads = [p.grad for p in model.semantic_backbone.parameters()]
    assert all(g is not None and g.abs().sum() == 0 for g in grads)  # DDP sees them


def test_semantic_branch_learns_from_its_classifier_when_detached():
    model, terms = tiny_model(detach=True)
    terms["total"].backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in model.semantic_head.parameters()
    )
    assert all(p.grad is not None for p in model.semantic_backbone.parameters())
