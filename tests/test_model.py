"""CRIF model (pipeline/crif/model.py) with tiny configs; expected shapes come from the config."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.crif.losses import LossWeights, crif_losses
from pipeline.crif.model import (
    ABLATIONS,
    BACKBONES,
    FUSIONS,
    CRIFConfig,
    CRIFOutput,
    GRUBackbone,
    ViltBackbone,
    ablation_branches,
    build_backbone,
    build_model,
    training_stages,
)

torch.set_num_threads(1)
BATCH, VISUAL_STEPS, SEMANTIC_STEPS = 3, 5, 4
LENGTHS = [3, 5, 1]  # per-sample valid visual steps (left-aligned masks)


def tiny_config(**overrides) -> CRIFConfig:
    settings = dict(
        num_classes=5, visual_dim=12, semantic_dim=7, hidden_dim=16, shared_dim=24, rho=8,
        vilt_layers=1, vilt_heads=4, vilt_hidden=32, vilt_intermediate=64, max_positions=16,
    )  # fmt: skip
    settings.update(overrides)
    return CRIFConfig(**settings)


def lengths_to_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) bool


def inputs(config: CRIFConfig, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(BATCH, VISUAL_STEPS, config.visual_dim, generator=generator)
    semantic = torch.randn(BATCH, SEMANTIC_STEPS, max(config.semantic_dim, 1), generator=generator)
    visual_mask = lengths_to_mask(LENGTHS, VISUAL_STEPS)
    semantic_mask = lengths_to_mask([4, 2, 3], SEMANTIC_STEPS)
    return visual, visual_mask, semantic, semantic_mask


def labels_for(config: CRIFConfig) -> torch.Tensor:
    if config.task == "multi_label":
        return torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1]])
    return torch.tensor([0, 3, 4])


def model_for(config: CRIFConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config)


def assert_shapes(output: CRIFOutput, config: CRIFConfig, with_semantic: bool) -> None:
    branches = ablation_branches(config.ablation)
    logits = (BATCH, config.num_classes)
    expected = {
        "logits": logits,
        "logits_visual": logits,
        "x_a": (BATCH, config.shared_dim),
        "x_c": (BATCH, config.rho),
        "x": (BATCH, config.hidden_dim),
        "t_r": (BATCH, config.hidden_dim) if "inference" in branches else None,
        "logits_recon": logits if "recon" in branches else None,
        "logits_fused": logits if "fusion" in branches else None,
    }
    semantic = with_semantic and "semantic" in branches
    expected["t_a"] = (BATCH, config.shared_dim) if semantic else None
    expected["t_c"] = (BATCH, config.rho) if semantic else None
    expected["t"] = (BATCH, config.hidden_dim) if semantic else None
    expected["logits_semantic"] = logits if semantic else None
    actual = {k: None if v is None else tuple(v.shape) for k, v in vars(output).items()}
    assert actual == expected
    head = output.logits_fused if "fusion" in branches else output.logits_visual
    if config.ablation == "inference":  # +Inference predicts from t_r (paper Table III = V)
        head = output.logits_recon
    assert output.logits is head


def test_prediction_head_option_and_old_checkpoint_configs():
    config = tiny_config(ablation="full", prediction="inferred")
    visual, visual_mask, _, _ = inputs(config)
    output = model_for(config)(visual, visual_mask)
    assert output.logits is output.logits_recon
    with pytest.raises(ValueError, match="no fused head"):
        tiny_config(ablation="align", prediction="fused")
    # An older checkpoint's model_config: detach_semantic, and +Inference predicted from x_c.
    old = {**tiny_config(ablation="inference").to_dict(), "detach_semantic": False}
    del old["semantic_gradients"], old["semantic_loss"], old["prediction"]
    restored = CRIFConfig.from_dict(old)
    assert (restored.semantic_gradients, restored.head) == ("flow", "visual")
    assert restored.semantic_loss


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_output_shapes_for_every_ablation(backbone, ablation):
    config = tiny_config(backbone=backbone, ablation=ablation)
    model = model_for(config)
    visual, visual_mask, semantic, semantic_mask = inputs(config)
    assert_shapes(model(visual, visual_mask, semantic, semantic_mask), config, with_semantic=True)
    assert_shapes(model(visual, visual_mask), config, with_semantic=False)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_shapes_for_every_fusion_operator(backbone, fusion):
    config = tiny_config(backbone=backbone, fusion=fusion, task="multi_label")
    model = model_for(config)
    assert_shapes(model(*inputs(config)), config, with_semantic=True)


@pytest.mark.parametrize(
    ("fusion", "combine"),
    [
        ("concat", lambda a, b: torch.cat((a, b), dim=-1)),
        ("plus", lambda a, b: a + b),
        ("mult", lambda a, b: a * b),
        ("max", torch.maximum),
        ("min", torch.minimum),
    ],
)
def test_fusion_operator_combines_the_two_taus(fusion, combine):
    model = model_for(tiny_config(fusion=fusion))
    x_c, t_r = torch.randn(BATCH, model.config.rho), torch.randn(BATCH, model.config.hidden_dim)
    fusion_module = model.fusion
    expected = fusion_module.mix(combine(fusion_module.visual(x_c), fusion_module.inferred(t_r)))
    assert torch.equal(fusion_module(x_c, t_r), expected)
    assert (expected >= 0).all()  # tau ends in ReLU


def test_baseline_with_no_semantic_dimension_builds_no_semantic_branch():
    config = tiny_config(ablation="baseline", semantic_dim=0)
    model = model_for(config)
    assert model.semantic_backbone is None and model.inference_encoder is None
    visual, visual_mask, semantic, semantic_mask = inputs(config)
    output = model(visual, visual_mask, semantic, semantic_mask)  # semantic ignored
    assert_shapes(output, config, with_semantic=False)


def test_semantic_input_needs_its_mask():
    config = tiny_config()
    visual, visual_mask, semantic, _ = inputs(config)
    with pytest.raises(ValueError):
        model_for(config)(visual, visual_mask, semantic)


# ----------------------------------------------------------------------------- gradients


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def assert_all_have_gradients(parameters: dict[str, torch.nn.Parameter]) -> None:
    missing = [n for n, p in parameters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in parameters.values())


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_end_to_end_loss_trains_every_parameter(backbone, ablation):
    config = tiny_config(backbone=backbone, ablation=ablation, context_gating=True)
    model = model_for(config)
    output = model(*inputs(config))
    crif_losses(output, labels_for(config), config, LossWeights())["total"].backward()
    assert_all_have_gradients(trainable(model))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_stage_loss_trains_its_stage_parameters(ablation):
    config = tiny_config(ablation=ablation)
    model = model_for(config)
    for stage in training_stages(config):
        model.zero_grad(set_to_none=True)
        output = model(*inputs(config))
        crif_losses(output, labels_for(config), config, LossWeights(), stage=stage)[
            "total"
        ].backward()
        named = {id(p): n for n, p in model.named_parameters()}
        assert_all_have_gradients({named[id(p)]: p for p in model.stage_parameters(stage)})


def test_vilt_freezes_only_the_unused_image_patch_parameters():
    model = model_for(tiny_config(backbone="vilt"))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen, "ViLT's unused patch parameters should be frozen"
    unused = ("embeddings.cls_token", "embeddings.position_embeddings", "patch_embeddings")
    assert all(any(part in name for part in unused) for name in frozen)


# ----------------------------------------------------------------------------- visual path


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("ablation", ["align", "full"])
def test_visual_path_never_reads_the_semantic_input(backbone, ablation):
    config = tiny_config(backbone=backbone, ablation=ablation)
    model = model_for(config).eval()
    visual, visual_mask, semantic, semantic_mask = inputs(config)
    semantic.requires_grad_(True)
    with_semantic = model(visual, visual_mask, semantic, semantic_mask)
    other = model(visual, visual_mask, torch.randn_like(semantic), semantic_mask)
    predicted = model.predict(visual, visual_mask)
    assert torch.equal(predicted, model(visual, visual_mask).logits)
    assert torch.equal(predicted, with_semantic.logits)
    assert torch.equal(predicted, other.logits)
    with_semantic.logits.sum().backward()
    assert semantic.grad is None


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padding_does_not_change_shorter_sequences(backbone):
    config = tiny_config(backbone=backbone)
    model = model_for(config).eval()
    visual, visual_mask, _, _ = inputs(config)
    visual = visual.masked_fill(~visual_mask[..., None], 1e3)  # loud padding
    batched = model.predict(visual, visual_mask)
    backbone_batched = model.visual_backbone(visual, visual_mask)
    for row, length in enumerate(LENGTHS):
        alone = visual[row : row + 1, :length]
        mask = torch.ones(1, length, dtype=torch.bool)
        assert torch.allclose(model.predict(alone, mask), batched[row : row + 1], atol=1e-5)
        single = model.visual_backbone(alone, mask)
        assert torch.allclose(single, backbone_batched[row : row + 1], atol=1e-5)


def test_gru_rejects_masks_that_are_not_left_aligned():
    backbone = GRUBackbone(4, 6)
    with pytest.raises(ValueError):
        backbone(torch.randn(1, 3, 4), torch.tensor([[True, False, True]]))


def test_gru_empty_sequence_gives_zero_vector():
    backbone = GRUBackbone(4, 6, context_gating=True)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    hidden = backbone(torch.randn(2, 3, 4), mask)
    assert hidden.shape == (2, 6)
    assert torch.equal(hidden[1], torch.zeros(6))


def test_vilt_uses_temporal_order_and_bounds_it():
    # ViltModel adds no position embedding to image_embeds: order comes only from ours
    config = tiny_config(backbone="vilt", dropout=0.0)
    torch.manual_seed(0)
    backbone = build_backbone("vilt", config.visual_dim, config).eval()
    assert isinstance(backbone, ViltBackbone)
    sequence, mask = torch.randn(1, 4, config.visual_dim), torch.ones(1, 4, dtype=torch.bool)

    def order_effect() -> float:
        with torch.no_grad():
            return (backbone(sequence, mask) - backbone(sequence.flip(1), mask)).abs().max().item()

    with torch.no_grad():
        backbone.positions.normal_()
    assert order_effect() > 1e-6
    with torch.no_grad():
        backbone.positions.zero_()
    assert order_effect() < 1e-7
    too_long = torch.randn(1, config.max_positions + 1, config.visual_dim)
    with pytest.raises(ValueError):
        backbone(too_long, torch.ones(1, config.max_positions + 1, dtype=torch.bool))


def test_build_backbone_rejects_unknown_kind():
    with pytest.raises(ValueError):
        build_backbone("lstm", 4, tiny_config())


# ----------------------------------------------------------------------------- stages


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_stage_parameters_partition_the_trainable_parameters(backbone, ablation):
    model = model_for(tiny_config(backbone=backbone, ablation=ablation))
    stages = [{id(p) for p in model.stage_parameters(stage)} for stage in (1, 2, 3)]
    refit = {id(p) for p in model.visual_head.parameters()} if ablation == "align" else set()
    assert stages[0] & stages[2] == refit  # the visual head, refit in stage 3, is in both
    assert sum(len(s) for s in stages) - len(refit) == len(set.union(*stages))  # else disjoint
    assert set.union(*stages) == {id(p) for p in trainable(model).values()}
    in_stage = {
        n: i + 1 for n, p in model.named_parameters() for i, s in enumerate(stages) if id(p) in s
    }
    assert in_stage["visual_shared.0.weight"] == 1
    if ablation in ("inference", "full"):
        assert in_stage["inference_encoder.0.weight"] == 2
        assert in_stage["recon_head.1.weight"] == 2
    if ablation == "fusion":  # no L_recon: E_t^r, D_t^r are first trained by L_mix
        assert in_stage["inference_encoder.0.weight"] == 3
    if "fusion" in ablation_branches(ablation):
        assert in_stage["fused_head.1.weight"] == 3
    with pytest.raises(ValueError):
        model.stage_parameters(4)


@pytest.mark.parametrize(
    ("ablation", "stages"),
    [
        ("baseline", (1,)),
        ("align", (1, 2, 3)),  # stage 3 refits the visual head it predicts with
        ("inference", (1, 2)),  # predicts from t_r, whose head stage 2 trains
        ("fusion", (1, 2, 3)),
        ("full", (1, 2, 3)),
    ],
)
def test_training_stages(ablation, stages):
    assert training_stages(tiny_config(ablation=ablation)) == stages


# ----------------------------------------------------------------------------- config


def test_config_round_trips_through_dict_and_json():
    config = tiny_config(backbone="vilt", fusion="max", task="multi_label", vilt_pretrained="/x")
    assert CRIFConfig.from_dict(config.to_dict()) == config
    assert CRIFConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "overrides",
    [
        {"task": "regression"},
        {"backbone": "lstm"},
        {"fusion": "attention"},
        {"ablation": "everything"},
        {"align_fn": "mmd"},
        {"align_target": "half"},
        {"num_classes": 0},
        {"rho": 0},
        {"semantic_dim": 0},  # only "baseline" may drop the semantic branch
        {"dropout": 1.0},
        {"vilt_hidden": 30, "vilt_heads": 4},
    ],
)
def test_config_rejects_invalid_values(overrides):
    with pytest.raises(ValueError):
        tiny_config(**overrides)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError):
        CRIFConfig.from_dict({**tiny_config().to_dict(), "layers": 3})


# ----------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("backbone", BACKBONES)
def test_state_dict_round_trip(backbone, tmp_path):
    config = tiny_config(backbone=backbone)
    model = model_for(config, seed=1).eval()
    torch.save({"config": config.to_dict(), "model": model.state_dict()}, tmp_path / "model.pt")
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    restored = model_for(CRIFConfig.from_dict(checkpoint["config"]), seed=2)
    restored.load_state_dict(checkpoint["model"])
    restored.eval()
    visual, visual_mask, _, _ = inputs(config)
    assert torch.equal(restored.predict(visual, visual_mask), model.predict(visual, visual_mask))


def test_vilt_from_local_pretrained_directory(tmp_path):
    from transformers import ViltConfig, ViltModel

    saved = ViltModel(
        ViltConfig(
            vocab_size=200, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=48, max_position_embeddings=8, image_size=32, patch_size=16,
        )
    )  # fmt: skip
    saved.save_pretrained(tmp_path / "vilt")
    config = tiny_config(backbone="vilt", vilt_pretrained=str(tmp_path / "vilt"))
    model = model_for(config)
    vilt = model.visual_backbone.vilt
    assert vilt.config.hidden_size == 24  # from the directory, not vilt_hidden
    assert model.semantic_backbone.vilt.config.hidden_size == 24
    query = "encoder.layer.0.attention.attention.query.weight"
    assert torch.equal(vilt.state_dict()[query], saved.state_dict()[query])
    assert_shapes(model(*inputs(config)), config, with_semantic=True)
    with pytest.raises(FileNotFoundError):
        build_model(tiny_config(backbone="vilt", vilt_pretrained=str(tmp_path / "missing")))


# ----------------------------------------------------------------------------- learning


def synthetic(generator, prototypes, samples: int):
    """Class clear in the semantic input, buried in noise in the visual one."""
    visual_prototypes, semantic_prototypes = prototypes
    labels = torch.randint(0, 4, (samples,), generator=generator)
    visual_noise = 2.0 * torch.randn(samples, 4, 8, generator=generator)
    semantic_noise = 0.3 * torch.randn(samples, 3, 8, generator=generator)
    visual = visual_prototypes[labels][:, None] + visual_noise  # (N, 4, 8)
    semantic = semantic_prototypes[labels][:, None] + semantic_noise  # (N, 3, 8)
    return visual, semantic, labels


def test_full_crif_learns_a_visually_noisy_problem():
    generator = torch.Generator().manual_seed(0)
    prototypes = (
        torch.randn(4, 8, generator=generator),
        2 * torch.randn(4, 8, generator=generator),
    )
    visual, semantic, labels = synthetic(generator, prototypes, 256)
    test_visual, _, test_labels = synthetic(generator, prototypes, 512)
    config = CRIFConfig(
        num_classes=4, visual_dim=8, semantic_dim=8, hidden_dim=16, shared_dim=16, rho=8
    )
    model = model_for(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    visual_mask, semantic_mask = (
        torch.ones(256, 4, dtype=torch.bool),
        torch.ones(256, 3, dtype=torch.bool),
    )
    for _ in range(250):
        batch = torch.randint(0, 256, (64,), generator=generator)
        output = model(visual[batch], visual_mask[batch], semantic[batch], semantic_mask[batch])
        loss = crif_losses(output, labels[batch], config, LossWeights())["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model.predict(test_visual, torch.ones(512, 4, dtype=torch.bool)).argmax(dim=1)
    accuracy = (predicted == test_labels).float().mean().item()
    assert accuracy > 0.6, f"held-out accuracy {accuracy:.3f} (chance 0.25)"
