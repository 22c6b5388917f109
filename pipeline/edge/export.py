"""Export a trained model's visual path to ONNX: S3D + CRIF as one graph, and the head alone.

    summary = export_model(ExportConfig(model="outputs/run", out="outputs/edge"))

``model.onnx``: ``clips`` (batch, clips, 3, clip_len, crop, crop), raw 0-255 values (uint8 by
default, float32 on request), and ``clip_mask`` (batch, clips) bool, True for real clips
(left-aligned) -> ``probabilities`` (batch, classes) for each whole video. Inside: /255 and
the mean/std of the S3D set-up, S3D per clip, then the CRIF visual path over the clip
sequence (x -> x_a -> x_c, x_a -> t_r, fusion, classifier), softmax or sigmoid: the pooling
of jobs/score.py. ``head.onnx``: ``features`` (batch, clips, 1024) float32 and ``clip_mask``
-> ``probabilities``. Batch and clip count are dynamic.

The GRU backbone is rewritten for export (its packed-sequence form does not trace with dynamic
lengths): one GRU step per clip in a ``scan`` (ONNX ``Scan``), a step past a video's last
clip keeping the state, so the final state is the packed GRU's. The input standardiser's
float64 statistics become the float32 mean and scale PyTorch computes from them. Before
anything is written, ONNX Runtime must reproduce PyTorch on real-size clips within
``PARITY_TOLERANCE``; the directory is staged and renamed whole.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.artifact import ExtractorSetup, load_model, model_id, resolve_model_dir
from pipeline.common.configs import check_choices
from pipeline.edge.metadata import (
    BACKBONE_FILE,
    EXPORT_FORMAT,
    HEAD_FILE,
    INT8_FILE,
    METADATA_FILE,
    METADATA_KEY,
    MODEL_FILE,
    Preprocessing,
    file_sha256,
)

__all__ = [
    "PARITY_TOLERANCE",
    "ExportConfig",
    "ExportedBackbone",
    "ExportedHead",
    "ExportedVisualPath",
    "ScanGRU",
    "ExportModules",
    "build_export_modules",
    "export_model",
    "rebuild_s3d",
]

logger = logging.getLogger(__name__)

GRAPHS = {
    MODEL_FILE: "a video's clips -> its probabilities",
    BACKBONE_FILE: "clips -> S3D features",
    HEAD_FILE: "S3D features of a video -> its probabilities",
}
PARITY_TOLERANCE = 1e-4  # max |probability difference| ONNX Runtime vs PyTorch, else refused
InputDtype = Literal["uint8", "float32"]


@dataclass(frozen=True)
class ExportConfig:
    """One export; jobs/export.py maps its flags 1:1 onto these fields."""

    model: str  # RUN_DIR, RUN_DIR/model, a Tune best/ dir, or a model directory
    out: str  # export directory (written whole: model.onnx, head.onnx, model.json)
    opset: int = 18  # ONNX opset of the exported graphs
    input_dtype: InputDtype = "uint8"  # dtype of the clips input (raw 0-255 values either way)
    s3d_weights: str | None = None  # a local S3D .pth when the model was trained on one
    int8: bool = False  # also write model.int8.onnx (static QDQ quantisation of the convolutions)
    calibration: str | None = None  # int8 calibration: videos (dir/glob/list/tar) or a store
    calibration_clips: int = 16  # clips that calibrate the int8 activation ranges
    check: bool = True  # compare ONNX Runtime with PyTorch on real-size clips before writing

    def __post_init__(self):
        check_choices(self)
        if self.int8 and not self.calibration:
            raise ValueError("int8 needs calibration (videos or the training store)")
        if self.opset < 18:
            raise ValueError("opset must be >= 18 (the dynamo exporter's minimum)")


# ---------------------------------------------------------------------------- modules


class ScanGRU(nn.Module):
    """``GRUBackbone`` for export: the last valid GRU state of each (left-aligned) sequence.

    The same weights and gate equations as ``nn.GRU`` (r, z, n; reset applied after the
    hidden projection); an all-padding row keeps the zero state, as the packed form gives.
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        gru = backbone.gru
        if gru.num_layers != 1 or gru.bidirectional or not gru.batch_first:
            raise ValueError("export supports the one-layer, one-direction GRU backbone")
        self.hidden_size = gru.hidden_size
        # Plain parameters: the tracer refuses nn.GRU attributes inside a scan body.
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            setattr(self, name.removesuffix("_l0"), nn.Parameter(getattr(gru, name).detach()))
        self.gate = backbone.gate

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        from torch._higher_order_ops.scan import scan

        inputs = nn.functional.linear(sequence, self.weight_ih, self.bias_ih)  # (B, N, 3H)
        initial = sequence.new_zeros(sequence.shape[0], self.hidden_size)  # (B, H)

        def step(hidden: Tensor, xs: tuple[Tensor, Tensor]):
            projected, valid = xs  # (B, 3H), (B,)
            recurrent = nn.functional.linear(hidden, self.weight_hh, self.bias_hh)
            input_r, input_z, input_n = projected.chunk(3, dim=-1)
            hidden_r, hidden_z, hidden_n = recurrent.chunk(3, dim=-1)
            reset = torch.sigmoid(input_r + hidden_r)
            update = torch.sigmoid(input_z + hidden_z)
            candidate = torch.tanh(input_n + reset * hidden_n)
            new = (1 - update) * candidate + update * hidden
            new = torch.where(valid[:, None], new, hidden)  # past the end: keep the state
            return new, new.clone()

        last, _ = scan(step, initial, (inputs.transpose(0, 1), mask.bool().transpose(0, 1)))
        if self.gate is not None:
            last = last * torch.sigmoid(self.gate(last))
        return last  # (B, H)


class _Standardizer(nn.Module):
    """``InputStandardizer`` in eval mode, its statistics as PyTorch turns them into float32."""

    def __init__(self, standardizer: nn.Module):
        super().__init__()
        variance = (standardizer.second_moment - standardizer.mean**2).clamp_min(0)
        self.register_buffer("mean", standardizer.mean.to(torch.float32))
        self.register_buffer("scale", (variance + standardizer.eps).rsqrt().to(torch.float32))

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        return (sequence - self.mean) * self.scale * mask.unsqueeze(-1)


class ExportedHead(nn.Module):
    """S3D features (B, N, D) and clip mask (B, N) -> probabilities (B, C): ``CRIF.predict``
    plus the softmax (single-label) or sigmoid (multi-label) of jobs/score.py."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        backbone = model.visual_backbone
        self.standardizer = _Standardizer(model.visual_input)
        self.backbone = ScanGRU(backbone) if hasattr(backbone, "gru") else backbone
        self.shared, self.clip, self.head = (
            model.visual_shared,
            model.visual_clip,
            model.visual_head,
        )
        self.inference_encoder = model.inference_encoder
        self.inference_decoder = model.inference_decoder
        self.fusion, self.fused_head = model.fusion, model.fused_head
        self.multi_label = task == "multi_label"

    def forward(self, features: Tensor, clip_mask: Tensor) -> Tensor:
        mask = clip_mask.bool()
        sequence = self.standardizer(features, mask)  # (B, N, D)
        x_a = self.shared(self.backbone(sequence, mask))  # (B, S)
        x_c = self.clip(x_a)  # (B, rho)
        if self.fusion is not None:
            t_r = self.inference_decoder(self.inference_encoder(x_a))  # (B, H)
            logits = self.fused_head(self.fusion(x_c, t_r))
        else:
            logits = self.head(x_c)  # (B, C)
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)


class ExportedBackbone(nn.Module):
    """Raw clips (N, 3, L, H, W) -> S3D features (N, 1024), normalisation inside."""

    def __init__(self, s3d: nn.Module, preprocessing: Preprocessing):
        super().__init__()
        self.s3d = s3d
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, clips: Tensor) -> Tensor:
        normalised = (clips.to(torch.float32) / 255.0 - self.mean) / self.std  # normalize_clips
        return self.s3d(normalised)  # (N, 1024)


class ExportedVisualPath(nn.Module):
    """Raw clips (B, N, 3, L, H, W) and clip mask (B, N) -> video probabilities (B, C)."""

    def __init__(self, backbone: ExportedBackbone, head: ExportedHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, clips: Tensor, clip_mask: Tensor) -> Tensor:
        batch, count = clips.shape[0], clips.shape[1]
        features = self.backbone(clips.reshape(batch * count, *clips.shape[2:]))
        return self.head(features.reshape(batch, count, -1), clip_mask)  # (B, N, 1024) -> (B, C)


# ---------------------------------------------------------------------------- building


def rebuild_s3d(info: dict, s3d_weights: str | None = None):
    """The model's S3D extractor, rebuilt from its record; refused unless it is the same."""
    from feature_extractors import build_extractor

    recorded = ExtractorSetup.from_metadata(info, "visual")
    if recorded is None:
        raise ValueError("the model records no visual extractor set-up; cannot export it")
    if recorded.extractor != "s3d":
        raise ValueError(f"export needs S3D visual features, the model has {recorded.extractor!r}")
    config = dict(recorded.config)
    if s3d_weights:
        config["weights"] = s3d_weights
    extractor = build_extractor(recorded.extractor, config)
    recorded.check_matches(
        ExtractorSetup.from_description(extractor.describe()), "S3D weights/preprocessing"
    )
    return extractor, recorded


@dataclass
class ExportModules:
    """The three exported modules and the PyTorch objects they must reproduce."""

    path: ExportedVisualPath
    backbone: ExportedBackbone
    head: ExportedHead
    model: nn.Module  # the CRIF model as load_model gives it
    extractor: object  # the S3DExtractor jobs/score.py would build
    info: dict
    setup: ExtractorSetup


def build_export_modules(model_dir: Path, s3d_weights: str | None = None) -> ExportModules:
    model, info = load_model(model_dir)
    extractor, setup = rebuild_s3d(info, s3d_weights)
    preprocessing = Preprocessing.from_s3d_config(setup.config)
    head = ExportedHead(model, info["task"]).eval()
    s3d = copy.deepcopy(extractor.model).to(memory_format=torch.contiguous_format).eval()
    backbone = ExportedBackbone(s3d, preprocessing).eval()
    path = ExportedVisualPath(backbone, head).eval()
    return ExportModules(path, backbone, head, model, extractor, info, setup)


def _export(
    module, example: tuple, names: tuple, path: Path, opset: int, dims, output="probabilities"
):
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=True,
        opset_version=opset,
        input_names=list(names),
        output_names=[output],
        dynamic_shapes=dims,
        external_data=False,
        verbose=False,
    )


def _set_metadata(path: Path, document: dict, description: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {METADATA_KEY: json.dumps(document), "description": description}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = description
    onnx.save(model, str(path))


def export_model(config: ExportConfig) -> dict:
    """Write the export directory; return its summary (files, sizes, parity measured)."""
    import onnx
    import onnxruntime

    model_dir = resolve_model_dir(config.model)
    modules = build_export_modules(model_dir, config.s3d_weights)
    preprocessing = Preprocessing.from_s3d_config(modules.setup.config)
    out = Path(config.out)
    staging = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    try:
        document = _document(
            config, modules.info, modules.setup, preprocessing, model_id(model_dir)
        )
        _export_all(modules, staging, config, preprocessing)
        for name, what in GRAPHS.items():
            _set_metadata(staging / name, document, f"CRIF visual path: {what}")
            onnx.checker.check_model(str(staging / name))
        parity = _check_parity(staging, config, modules, preprocessing)
        if config.check:
            worst = max(parity.values())
            if not worst <= PARITY_TOLERANCE:
                raise RuntimeError(
                    f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {PARITY_TOLERANCE})"
                )
        files = list(GRAPHS)
        if config.int8:
            from pipeline.edge.quantize import quantize_backbone

            document["int8"] = quantize_backbone(
                staging / BACKBONE_FILE,
                staging / INT8_FILE,
                config.calibration,
                preprocessing,
                config.calibration_clips,
            )
            _set_metadata(staging / INT8_FILE, document, GRAPHS[BACKBONE_FILE] + ", int8 (QDQ)")
            files.append(INT8_FILE)
        document["parity"] = {**parity, "onnxruntime": onnxruntime.__version__}
        document["files"] = {name: file_sha256(staging / name) for name in files}
        (staging / METADATA_FILE).write_text(json.dumps(document, indent=2))
        _replace_directory(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = {name: (out / name).stat().st_size for name in files}
    logger.info(f"[export] {document['model_id']} -> {out} ({sizes})")
    return {"out": str(out), "model_id": document["model_id"], "bytes": sizes, "parity": parity}


def _export_all(modules: ExportModules, staging: Path, config, preprocessing) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    clips = torch.export.Dim("clips", min=1, max=65536)
    # Example sizes of 2 and 3: a size of 1 would be specialised into the graph.
    dtype = torch.uint8 if config.input_dtype == "uint8" else torch.float32
    example = torch.zeros((2, 3, *preprocessing.clip_shape()), dtype=dtype)
    mask = torch.ones(2, 3, dtype=torch.bool)
    features = torch.zeros(2, 3, modules.setup.dim)
    both = {0: batch, 1: clips}
    _export(modules.path, (example, mask), ("clips", "clip_mask"), staging / MODEL_FILE,
            config.opset, {"clips": both, "clip_mask": both})  # fmt: skip
    _export(modules.backbone, (example[0],), ("clips",), staging / BACKBONE_FILE, config.opset,
            {"clips": {0: clips}}, output="features")  # fmt: skip
    _export(modules.head, (features, mask), ("features", "clip_mask"), staging / HEAD_FILE,
            config.opset, {"features": both, "clip_mask": both})  # fmt: skip


def _document(config, info, setup, preprocessing: Preprocessing, identifier: str) -> dict:
    import onnx

    clip = "clip_len, crop, crop"
    return {
        "format": EXPORT_FORMAT,
        "model_id": identifier,
        "task": info["task"],
        "class_names": list(info["class_names"]),
        "preprocessing": preprocessing.to_dict(),
        "extractor": setup.to_description(),
        "model_config": info.get("model_config"),
        "inputs": {
            "clips": f"({config.input_dtype}) batch, clips, 3, {clip}: raw 0-255 RGB",
            "clip_mask": "(bool) batch, clips: True for real clips, valid clips first",
            "features": f"(float32) batch, clips, {setup.dim}: head.onnx only",
        },
        "input_dtype": config.input_dtype,
        "outputs": {"probabilities": "(float32) batch, classes"},
        "activation": "sigmoid" if info["task"] == "multi_label" else "softmax",
        "opset": config.opset,
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__},
    }


def _check_parity(staging, config, modules: ExportModules, preprocessing) -> dict[str, float]:
    """Max |difference| of each graph vs PyTorch on one real-size video (2 clips) and on
    padded feature batches; recorded in model.json."""
    import onnxruntime

    task, model = modules.info["task"], modules.model
    generator = np.random.default_rng(0)
    clip = (preprocessing.clip_len, preprocessing.crop, preprocessing.crop, 3)
    clips = generator.integers(0, 256, size=(2, *clip), dtype=np.uint8)
    features = modules.extractor(clips)  # (2, 1024): jobs/score.py's features
    expected = _probabilities(model, task, features[None], np.ones((1, 2), bool))
    feed = clips.transpose(0, 4, 1, 2, 3)  # (N, 3, L, H, W)
    feed = feed.astype(np.uint8 if config.input_dtype == "uint8" else np.float32)

    def run(name, inputs):
        return onnxruntime.InferenceSession(str(staging / name)).run(None, inputs)[0]

    whole = run(MODEL_FILE, {"clips": feed[None], "clip_mask": np.ones((1, 2), bool)})
    backbone = run(BACKBONE_FILE, {"clips": feed})
    sequences = generator.normal(size=(3, 5, modules.setup.dim)).astype(np.float32) + 0.5
    mask = np.arange(5)[None, :] < np.array([5, 2, 1])[:, None]
    head = run(HEAD_FILE, {"features": sequences, "clip_mask": mask})
    return {
        "model_max_abs_difference": float(np.abs(whole - expected).max()),
        "backbone_max_abs_difference": float(np.abs(backbone - features).max()),
        "head_max_abs_difference": float(
            np.abs(head - _probabilities(model, task, sequences, mask)).max()
        ),
    }


def _probabilities(model, task: str, features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """jobs/score.py's probabilities for padded features (B, N, D) and mask (B, N)."""
    with torch.inference_mode():
        logits = model.predict(torch.from_numpy(features), torch.from_numpy(mask)).float()
    return (logits.sigmoid() if task == "multi_label" else logits.softmax(-1)).numpy()


def _replace_directory(staging: Path, out: Path) -> None:
    """``out`` becomes ``staging``: never half written, the old one removed after."""
    previous = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
