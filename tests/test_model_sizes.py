"""Model sizes from the training config: ViLT layers/heads/width, GRU context gating, the
paper's 768-d recipes, and checkpoints written before these fields were flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline.artifact import load_model, write_checkpoint
from pipeline.common.configs import field_help, load_config
from pipeline.crif.model import CRIFConfig, build_backbone, build_model
from pipeline.train.trainer import ModelSettings, TrainConfig, model_config_for

REPO = Path(__file__).resolve().parents[1]
SIZE_FIELDS = ("context_gating", "vilt_layers", "vilt_heads", "vilt_hidden",
               "vilt_intermediate", "max_positions")  # fmt: skip
# What the stores of the paper's datasets would say: MSR-VTT 20 categories with 768-d text,
# ActivityNet 200 activities with VGGish audio.
STORES = {
    "msrvtt": {"task": "single_label", "class_names": [f"c{k}" for k in range(20)],
               "modalities": {"visual": {"dim": 1024}, "text": {"dim": 768}}},
    "activitynet": {"task": "single_label", "class_names": [f"c{k}" for k in range(200)],
                    "modalities": {"visual": {"dim": 1024}, "audio": {"dim": 128}}},
}  # fmt: skip


def paper_recipe(name: str, **overrides) -> TrainConfig:
    path = REPO / "configs" / f"train-{name}-paper.yaml"
    return load_config(TrainConfig, path, features="f", out="o", **overrides)


def test_size_fields_are_crif_config_fields_with_the_same_defaults():
    model = {f.name: f.default for f in dataclasses.fields(ModelSettings)}
    crif = {f.name: f.default for f in dataclasses.fields(CRIFConfig)}
    assert set(SIZE_FIELDS) <= set(model)
    assert {name: model[name] for name in model} == {name: crif[name] for name in model}
    assert all(field_help(TrainConfig)[name] for name in SIZE_FIELDS)


@pytest.mark.parametrize("name", sorted(STORES))
def test_paper_recipe_builds_the_papers_gru_model(name):
    config = paper_recipe(name)
    model_config = model_config_for(config, STORES[name])
    assert (model_config.hidden_dim, model_config.shared_dim) == (768, 768)
    assert model_config.context_gating and model_config.backbone == "gru"
    model = build_model(model_config).eval()
    for backbone in (model.visual_backbone, model.semantic_backbone):
        assert backbone.gru.hidden_size == 768 and backbone.gate.out_features == 768
    semantic_dim = model_config.semantic_dim
    with torch.no_grad():
        output = model(
            torch.randn(2, 3, 1024), torch.ones(2, 3, dtype=torch.bool),
            torch.randn(2, 2, semantic_dim), torch.ones(2, 2, dtype=torch.bool),
        )  # fmt: skip
    assert output.logits.shape == (2, len(STORES[name]["class_names"]))
    assert output.x_a.shape == (2, 768) and output.t_r.shape == (2, 768)


def test_paper_recipe_with_vilt_builds_a_vilt_b32_sized_backbone():
    """ViLT-B/32's encoder (12 layers x 12 heads, 768 wide, 3072 feed-forward), ~85M
    parameters; one backbone (the model builds two alike) on CPU, never trained here."""
    model_config = model_config_for(paper_recipe("msrvtt", backbone="vilt"), STORES["msrvtt"])
    backbone = build_backbone("vilt", model_config.visual_dim, model_config)
    vilt = backbone.vilt.config
    assert (vilt.num_hidden_layers, vilt.num_attention_heads) == (12, 12)
    assert (vilt.hidden_size, vilt.intermediate_size) == (768, 3072)
    assert len(backbone.vilt.encoder.layer) == 12 and backbone.output.out_features == 768
    encoder = sum(p.numel() for p in backbone.vilt.encoder.parameters())
    assert encoder == 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)


def test_size_flags_reach_the_model():
    from jobs import train

    flags = ["--features", "f", "--out", "o", "--backbone", "vilt", "--vilt-layers", "1"]
    flags += ["--vilt-heads", "2", "--vilt-hidden", "16", "--vilt-intermediate", "24"]
    flags += ["--max-positions", "8", "--hidden-dim", "12", "--shared-dim", "10", "--rho", "6"]
    config = train.parse_config(flags)
    metadata = {"task": "single_label", "class_names": ["a", "b", "c"],
                "modalities": {"visual": {"dim": 5}, "text": {"dim": 4}}}  # fmt: skip
    model = build_model(model_config_for(config, metadata)).eval()
    vilt = model.visual_backbone.vilt.config
    assert (vilt.num_hidden_layers, vilt.num_attention_heads) == (1, 2)
    assert (vilt.hidden_size, vilt.intermediate_size) == (16, 24)
    assert model.visual_backbone.positions.shape == (1, 8, 16)
    with torch.no_grad():
        logits = model.predict(torch.randn(2, 8, 5), torch.ones(2, 8, dtype=torch.bool))
    assert logits.shape == (2, 3)
    gated = train.parse_config(["--features", "f", "--out", "o", "--context-gating"])
    assert gated.model.context_gating and not train.parse_config(flags).model.context_gating
    with pytest.raises(ValueError, match="divisible"):
        model_config_for(config.replace_flat(vilt_heads=3), metadata)


def test_checkpoints_written_before_the_size_flags_still_load(tmp_path):
    """A checkpoint.json whose train_config (flat) and model_config predate the fields."""
    config = TrainConfig.from_flat(features="f", out="o", hidden_dim=8, shared_dim=8, rho=4)
    old_flat = {k: v for k, v in config.to_flat().items() if k not in SIZE_FIELDS}
    old_flat.pop("pos_weight")
    assert TrainConfig.from_dict(old_flat) == config
    grouped = dataclasses.asdict(config)
    for name in SIZE_FIELDS:
        del grouped["model"][name]
    del grouped["optimization"]["pos_weight"]
    assert TrainConfig.from_dict(grouped) == config
    metadata = {"task": "single_label", "class_names": ["a", "b"],
                "modalities": {"visual": {"dim": 6}, "text": {"dim": 4}}}  # fmt: skip
    model_config = model_config_for(config, metadata)
    torch.manual_seed(0)
    model = build_model(model_config)
    old_model_config = {k: v for k, v in model_config.to_dict().items() if k not in SIZE_FIELDS}
    info = {"model_config": old_model_config, "train_config": old_flat, "task": "single_label",
            "class_names": ["a", "b"], "modalities": metadata["modalities"]}  # fmt: skip
    write_checkpoint(tmp_path / "model", model.state_dict(), info)
    assert json.loads((tmp_path / "model" / "checkpoint.json").read_text()) == info
    loaded, read_info = load_model(tmp_path / "model")
    assert CRIFConfig.from_dict(read_info["model_config"]) == model_config
    assert TrainConfig.from_dict(read_info["train_config"]) == config
    visual, mask = torch.randn(3, 2, 6), torch.ones(3, 2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded.predict(visual, mask), model.eval().predict(visual, mask))
