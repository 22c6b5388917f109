"""Distributed CRIF training on Ray Train (V2): one config, one loop, one trainer builder.

    config = TrainConfig(features="outputs/features", out="outputs/run")
    summary = run_training(config)  # data, Ray Train, RUN_DIR/model, metrics.json, curves
    trainer = build_trainer(config, run_config=RunConfig(storage_path=..., name=...))  # Tune

Checkpoints are written and read by ``pipeline.artifact`` (the model-directory format);
this module hands them to Ray Train (``ray.train.report``) and takes them back on resume.

Decisions:
- Data comes from the store through Ray Data (``pipeline.train.data``). "train" is split across
  workers (equal shards); "val", "test" and "train_eval" (train again, unshuffled) are read
  whole by rank 0, which scores them on the visual-only path ``CRIF.predict``.
- ``batch_size`` is global: each of W workers takes ``batch_size // W`` rows per step.
- Losses under DDP are those of the GLOBAL batch: every step all-gathers the model outputs of
  all workers (differentiably) and each worker computes ``crif_losses`` on the whole batch.
  So CORAL's covariances (and SSAN's class centroids) are never per-worker estimates, and
  W workers with b rows each train like one worker with W*b rows: all_gather's backward sums
  the W identical losses' gradients and DDP's all-reduce averages them back.
- Rows whose semantic cell is null take part in the visual terms only; the semantic terms
  (L_semantic, L_sim, L_align, L_recon_distance) are means over the rows that have one.
- Adam with weight decay 1e-3, lr x0.1 every ``lr_step`` epochs (paper IV-B/IV-C).
  ``multistage`` trains each stage of ``model.training_stages`` for ``epochs_per_stage``
  epochs (the paper: 13), each with a fresh optimiser over its own modules and its own step
  decay; stage 2 keeps stage 1's trainable too, since L_align only reaches stage-1 modules.
- A checkpoint per epoch (Ray keeps the last 2); a restarted worker group (FailureConfig) or
  a re-run with the same ``out`` resumes from the latest. The exported model (RUN_DIR/model)
  is the LAST epoch's: by then the lr has decayed, and picking by val (drawn from the training
  cameras) would select on data that the unseen test cameras do not resemble.
- Local mode (``num_workers=0``): the loop runs in the caller's process (benchmark, tuning).
  Ray persists no checkpoints there, so the loop keeps them under ``out/train/local``.
- ``use_gpu``: bf16 autocast, pinned batches and non-blocking copies. Not exercised on the
  CPU-only development machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer
from torch.nn.parallel import DistributedDataParallel

from pipeline.artifact import CHECKPOINT_FORMAT, export_model, read_checkpoint, write_checkpoint
from pipeline.common.atomic import atomic_write_json
from pipeline.common.configs import (
    build_config,
    check_choices,
    flatten_document,
    to_flat,
)
from pipeline.common.logs import ensure_logging
from pipeline.crif.losses import LossWeights, crif_losses
from pipeline.crif.metrics import classification_metrics
from pipeline.crif.model import (
    STRATEGIES,
    Ablation,
    AlignFunction,
    AlignTarget,
    Backbone,
    CRIFConfig,
    CRIFOutput,
    FusionOperator,
    Prediction,
    SemanticGradients,
    Strategy,
    ablation_branches,
    build_model,
    multistage_stages,
    training_stages,
)
from pipeline.store import read_dataset_json, split_sizes
from pipeline.train.data import PaddedBatchCollate, StoreSplits, inspect_store, read_datasets

__all__ = [
    "STRATEGIES",
    "ModelSettings",
    "OptimizationSettings",
    "ResourceSettings",
    "TrainConfig",
    "batch_losses",
    "build_trainer",
    "default_run_config",
    "evaluate",
    "gather_batch",
    "metrics_document",
    "model_config_for",
    "run_training",
    "split_description",
    "stage_plan",
    "train_loop",
]

logger = logging.getLogger(__name__)

SemanticModality = Literal["text", "audio"]
# Keys of the flat train_config of older files that are no TrainConfig fields any more.
_RETIRED_FIELDS = ("fail_at_epoch", "fail_kind", "address")
LR_DECAY = 0.1
SEMANTIC_TERMS = ("L_semantic", "L_sim", "L_align", "L_recon_distance")
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class ModelSettings:
    """The model: these fields are ``CRIFConfig``'s own (same names), the rest comes from the
    store (classes, dims, task)."""

    backbone: Backbone = "gru"  # sequence backbone of both modalities (GRU or ViLT-style)
    ablation: Ablation = "full"  # branches built: baseline, align, inference, fusion, full CRIF
    align_fn: AlignFunction = "coral"  # L_align: Deep CORAL, L2, KL divergence or SSAN
    align_target: AlignTarget = "clip"  # aligned features: the key part x_c/t_c, or whole x_a/t_a
    fusion: FusionOperator = "concat"  # fusion operator of x_c and t_r
    # stop: the semantic side is a fixed teacher in L_sim/L_align; flow: eqs. 10/13 as written
    semantic_gradients: SemanticGradients = "stop"
    semantic_loss: bool = True  # L_semantic (CE on t_c) in L_1 (eq. 20 has none)
    prediction: Prediction = "auto"  # predicting head; auto: the ablation's (t_r for inference)
    hidden_dim: int = 256  # backbone output width (x, t, t_r)
    shared_dim: int = 256  # width of the shared alignment space (x_a, t_a) and of the fusion
    rho: int = 128  # width of the key part x_c, t_c
    dropout: float = 0.1  # dropout of the backbones and heads
    context_gating: bool = False  # GRU: gate the last hidden state, y = h * sigmoid(W h + b)
    vilt_layers: int = 2  # ViLT transformer layers (ViLT-B/32: 12)
    vilt_heads: int = 4  # ViLT attention heads (ViLT-B/32: 12)
    vilt_hidden: int = 128  # ViLT width, a multiple of vilt_heads (ViLT-B/32: 768)
    vilt_intermediate: int = 256  # ViLT feed-forward width (ViLT-B/32: 3072)
    max_positions: int = 512  # ViLT temporal position embeddings: the longest sequence read
    vilt_pretrained: str | None = None  # local from_pretrained ViLT directory (sets its size)


@dataclass(frozen=True)
class OptimizationSettings:
    """Losses, optimiser and schedule: Adam, lr x0.1 every ``lr_step`` epochs (paper IV-C)."""

    # multistage: alignment, inference, fusion stages (eqs. 20, 21, L_mix); end2end: eq. 22
    strategy: Strategy = "multistage"
    alpha_sim: float = 1.0  # weight of L_sim (distributional alignment)
    alpha_align: float = 1.0  # weight of L_align (content alignment)
    beta: float = 0.5  # weight of L_2 = L_recon + alpha_align L_align
    gamma: float = 0.5  # weight of L_mix (the fused prediction)
    recon_distance: float = 0.0  # weight of mse(t_r, t) added to L_2 (not in eq. 15: 0)
    align_warmup: int = 0  # epochs over which alpha_sim and alpha_align ramp up from 0
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 1e-3  # Adam weight decay
    lr_step: int = 4  # epochs between x0.1 learning-rate decays
    epochs: int = 12  # training epochs of end2end
    epochs_per_stage: int = 13  # training epochs of each multistage stage (paper: 13)
    batch_size: int = 64  # global batch, over all workers
    seed: int = 0  # seed of the initial weights, dropout and shuffling
    # BCE positive-class weight of multi-label tasks (paper: 20-150); None: 1
    pos_weight: float | None = None


@dataclass(frozen=True)
class ResourceSettings:
    """Where and how the loop runs."""

    num_workers: int = 1  # Ray Train workers; 0: local mode, the loop runs in this process
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    use_gpu: bool = False  # one GPU per worker (bf16 autocast)
    max_failures: int = 2  # worker-group restarts after a failure (FailureConfig; -1: no limit)
    materialize_below_mb: float = 1024  # a store smaller than this is read into memory once


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``asdict`` is Ray's ``train_loop_config`` and each
    leaf field is one flag of ``jobs/train.py`` (``--alpha-sim`` for ``alpha_sim``).

    Built from flat names: ``TrainConfig.from_flat(features=..., out=..., lr=1e-2)``;
    ``from_dict`` also reads the flat form of older checkpoint.json / metrics.json files.
    """

    features: str  # feature store directory (or URI)
    out: str  # RUN_DIR: checkpoints, model/, metrics.json, learning_curves.png
    semantic: SemanticModality = "text"  # privileged modality (unused by the baseline)
    # of the train videos held out as val, for a store without a val split (0: no hold-out)
    val_fraction: float = 0.0
    model: ModelSettings = field(default_factory=ModelSettings, metadata={"group": True})
    optimization: OptimizationSettings = field(
        default_factory=OptimizationSettings, metadata={"group": True}
    )
    resources: ResourceSettings = field(default_factory=ResourceSettings, metadata={"group": True})

    def __post_init__(self) -> None:
        for group in (self, self.model, self.optimization, self.resources):
            check_choices(group)
        optimization, resources = self.optimization, self.resources
        for name in ("epochs", "epochs_per_stage", "batch_size", "lr_step"):
            if getattr(optimization, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(optimization, name)}")
        if resources.num_workers < 0 or optimization.batch_size < max(resources.num_workers, 1):
            raise ValueError("need num_workers >= 0 and batch_size >= num_workers")
        if optimization.align_warmup < 0 or resources.max_failures < -1:
            raise ValueError("need align_warmup >= 0 and max_failures >= -1")
        if optimization.recon_distance < 0:
            raise ValueError(f"recon_distance must be >= 0, got {optimization.recon_distance}")
        if optimization.pos_weight is not None and optimization.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {optimization.pos_weight}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @classmethod
    def from_flat(cls, **fields: Any) -> TrainConfig:
        """From flat field names (flags, Tune spaces, grids): ``from_flat(features=.., lr=..)``."""
        return build_config(cls, fields)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> TrainConfig:
        """From ``asdict`` (grouped) or the flat form older files hold; test-only and
        job-only keys of old files (fail_at_epoch, fail_kind, address) are dropped."""
        document = {k: v for k, v in document.items() if k not in _RETIRED_FIELDS}
        return build_config(cls, flatten_document(cls, document))

    def to_flat(self) -> dict[str, Any]:
        """Every leaf field by its flat name."""
        return to_flat(self)

    def replace_flat(self, **fields: Any) -> TrainConfig:
        """A copy with some leaf fields changed, by flat name (``replace_flat(epochs=2)``)."""
        return build_config(type(self), {**to_flat(self), **fields})

    def resolved(self) -> TrainConfig:
        """The config with absolute local paths: Ray Train workers run in their own cwd."""
        absolute = {
            name: str(Path(getattr(self, name)).resolve())
            for name in ("features", "out")
            if "://" not in getattr(self, name)
        }
        return dataclasses.replace(self, **absolute)

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: ``epochs``, or ``epochs_per_stage`` x the stages."""
        settings = self.optimization
        if settings.strategy == "end2end":
            return settings.epochs
        stages = multistage_stages(self.model.ablation, self.model.prediction)
        return settings.epochs_per_stage * len(stages)

    @property
    def semantic_modality(self) -> str | None:
        """The modality read from the store; None for the visual-only baseline."""
        return None if self.model.ablation == "baseline" else self.semantic

    def loss_weights(self, epoch: int) -> LossWeights:
        """The weights at ``epoch``: the alignment terms ramp linearly over ``align_warmup``.

        A warm-up lets the visual backbone become input-dependent before L_sim acts: a
        backbone whose output barely depends on its input at initialisation (the random ViLT)
        is otherwise pulled to the constant that minimises L_sim and never recovers.
        """
        settings = self.optimization
        warmup = settings.align_warmup
        ramp = min(1.0, epoch / warmup) if warmup else 1.0
        return LossWeights(
            settings.alpha_sim * ramp,
            settings.alpha_align * ramp,
            settings.beta,
            settings.gamma,
            settings.recon_distance,
        )


def model_config_for(config: TrainConfig, metadata: dict[str, Any]) -> CRIFConfig:
    """The CRIFConfig of a run: the model group plus what the store says.

    A ``pos_weight`` (BCE only) is refused for a single-label store."""
    modality = config.semantic_modality
    if config.optimization.pos_weight is not None and metadata["task"] != "multi_label":
        raise ValueError(
            f"pos_weight {config.optimization.pos_weight:g} weighs the positives of the BCE "
            f"loss of multi_label tasks, but the store {config.features} is "
            f"{metadata['task']!r} (cross-entropy); leave pos_weight unset"
        )
    return CRIFConfig(
        num_classes=len(metadata["class_names"]),
        visual_dim=int(metadata["modalities"]["visual"]["dim"]),
        semantic_dim=int(metadata["modalities"][modality]["dim"]) if modality else 0,
        task=metadata["task"],
        **asdict(config.model),
    )


def stage_plan(config: TrainConfig, model_config: CRIFConfig) -> list[int | None]:
    """The loss stage of every epoch: None (end to end) or ``epochs_per_stage`` epochs of each
    stage in turn (1, 2, 3; see ``model.multistage_stages``)."""
    if config.optimization.strategy == "end2end":
        return [None] * config.optimization.epochs
    per_stage = config.optimization.epochs_per_stage
    return [stage for stage in training_stages(model_config) for _ in range(per_stage)]


# ---------------------------------------------------------------------------- losses


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_rows(tensor: torch.Tensor, sizes: list[int], differentiable: bool) -> torch.Tensor:
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded = torch.cat([tensor, padded[tensor.shape[0] :]])  # differentiable padding
    if differentiable:
        from torch.distributed.nn.functional import all_gather  # backward sums over ranks

        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def gather_batch(
    output: CRIFOutput, labels: torch.Tensor, has_semantic: torch.Tensor | None
) -> tuple[CRIFOutput, torch.Tensor, torch.Tensor | None]:
    """The global batch: every worker's rows, in rank order (identity on one process)."""
    if not _is_distributed():
        return output, labels, has_semantic
    size = torch.tensor([labels.shape[0]], device=labels.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    names = [f.name for f in dataclasses.fields(output) if getattr(output, f.name) is not None]
    tensors = [getattr(output, name) for name in names]
    widths = [t.shape[1] for t in tensors]
    gathered = _gather_rows(torch.cat(tensors, dim=1), sizes, differentiable=True)
    output = CRIFOutput(**dict(zip(names, gathered.split(widths, dim=1), strict=True)))
    labels = _gather_rows(labels, sizes, differentiable=False)
    if has_semantic is not None:
        has_semantic = _gather_rows(has_semantic.to(torch.uint8), sizes, False).bool()
    return output, labels, has_semantic


def _float_output(output: CRIFOutput) -> CRIFOutput:
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return CRIFOutput(**{k: None if v is None else v.float() for k, v in values.items()})


def _without_semantic(output: CRIFOutput) -> CRIFOutput:
    return dataclasses.replace(output, t=None, t_a=None, t_c=None, logits_semantic=None)


def _select_rows(output: CRIFOutput, index: torch.Tensor) -> CRIFOutput:
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return CRIFOutput(**{k: None if v is None else v[index] for k, v in values.items()})


def _has_visual_terms(stage: int | None, config: CRIFConfig) -> bool:
    """Whether crif_losses has any term at ``stage`` without a semantic side."""
    branches = ablation_branches(config.ablation)
    return stage in (None, 1, 3) or (stage == 2 and "recon" in branches)


def batch_losses(
    output: CRIFOutput,
    labels: torch.Tensor,
    has_semantic: torch.Tensor | None,
    config: CRIFConfig,
    weights: LossWeights,
    stage: int | None = None,
    pos_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``crif_losses`` where the semantic terms only see the rows that have a semantic input.

    The total is linear in its terms, so total = (visual terms, all rows) + (terms with the
    semantic side - the same without it, on the rows that have one). ``pos_weight`` (C,) is
    the BCE positive-class weight of multi-label tasks (None: 1).
    """
    options = dict(stage=stage, pos_weight=pos_weight)
    if output.t is None or has_semantic is None or bool(has_semantic.all()):
        return crif_losses(output, labels, config, weights, **options)
    visual_only = _has_visual_terms(stage, config)
    zero = output.logits.sum() * 0.0
    terms = crif_losses(_without_semantic(output), labels, config, weights, **options)
    terms = terms if visual_only else {"total": zero}
    # Keep the semantic branch in the graph even with no semantic row (DDP needs every
    # parameter to receive a gradient).
    total = terms["total"] + 0.0 * sum(
        t.sum() for t in (output.t, output.t_a, output.t_c, output.logits_semantic)
    )
    index = has_semantic.nonzero().squeeze(1)
    if index.numel():
        rows, row_labels = _select_rows(output, index), labels[index]
        full = crif_losses(rows, row_labels, config, weights, **options)
        base = zero
        if visual_only:
            base = crif_losses(_without_semantic(rows), row_labels, config, weights, **options)
            base = base["total"]
        total = total + full["total"] - base
        terms.update({k: v for k, v in full.items() if k in SEMANTIC_TERMS})
    terms["total"] = total
    return terms


# ---------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What one worker holds during a run."""

    config: TrainConfig
    model_config: CRIFConfig
    metadata: dict[str, Any]
    model: torch.nn.Module  # DDP-wrapped when distributed
    device: torch.device
    rank: int
    world_size: int
    train_collate: PaddedBatchCollate
    eval_collate: PaddedBatchCollate

    @property
    def module(self) -> torch.nn.Module:
        model = self.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    @property
    def local_mode(self) -> bool:
        return self.config.resources.num_workers == 0

    def autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def _start(config: TrainConfig) -> _Run:
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    metadata = read_dataset_json(config.features)
    model_config = model_config_for(config, metadata)
    torch.manual_seed(config.optimization.seed)  # identical initial weights on every worker
    model = build_model(model_config)
    if config.resources.num_workers == 0:
        use_cuda = config.resources.use_gpu and torch.cuda.is_available()
        device = torch.device("cuda" if use_cuda else "cpu")
        model = model.to(device)
    else:
        device = ray.train.torch.get_device()
        # A stage's loss leaves the other heads out.
        unused = config.optimization.strategy == "multistage"
        model = ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"find_unused_parameters": unused}
        )
    cap = model_config.max_positions if model_config.backbone == "vilt" else None
    common = dict(task=model_config.task, num_classes=model_config.num_classes, max_length=cap)
    return _Run(
        config=config,
        model_config=model_config,
        metadata=metadata,
        model=model,
        device=device,
        rank=rank,
        world_size=world_size,
        train_collate=PaddedBatchCollate(
            visual_dim=model_config.visual_dim, semantic_dim=model_config.semantic_dim, **common
        ),
        eval_collate=PaddedBatchCollate(visual_dim=model_config.visual_dim, **common),
    )


def _optimizer(run: _Run, stage: int | None, state: dict | None):
    module = run.module
    if stage is None:
        parameters = [p for p in module.parameters() if p.requires_grad]
    else:
        stages = (1, 2) if stage == 2 else (stage,)
        parameters = [p for s in stages for p in module.stage_parameters(s)]
    settings = run.config.optimization
    optimizer = torch.optim.Adam(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, gamma=LR_DECAY)
    if state is not None and "optimizer" in state and state["stage"] == stage:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return optimizer, scheduler


def _pos_weight(run: _Run) -> torch.Tensor | None:
    """The (C,) BCE positive-class weight on the run's device; None when not set."""
    value = run.config.optimization.pos_weight
    if value is None:
        return None
    return torch.full((run.model_config.num_classes,), float(value), device=run.device)


def _train_epoch(run: _Run, optimizer, stage: int | None, epoch: int) -> tuple[dict, int]:
    run.model.train()
    torch.manual_seed(run.config.optimization.seed + 7919 * epoch + run.rank)  # dropout, resumable
    local_batch = max(run.config.optimization.batch_size // max(run.world_size, 1), 1)
    batches = ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=local_batch,
        collate_fn=run.train_collate,
        local_shuffle_buffer_size=max(8 * local_batch, 256),
        local_shuffle_seed=run.config.optimization.seed * 100003 + epoch * 101 + run.rank,
        pin_memory=run.device.type == "cuda",
    )
    weights = run.config.loss_weights(epoch)
    pos_weight = _pos_weight(run)
    sums: dict[str, float] = defaultdict(float)
    rows = 0
    for batch in batches:
        batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
        semantic = batch.get("semantic") if run.module.semantic_backbone is not None else None
        mask = batch.get("semantic_mask") if semantic is not None else None
        with run.autocast():
            output = run.model(batch["visual"], batch["visual_mask"], semantic, mask)
        output = _float_output(output)  # losses in float32 (bf16 forward on GPU)
        has_semantic = mask.any(dim=1) if mask is not None else None
        output, labels, has_semantic = gather_batch(output, batch["labels"], has_semantic)
        terms = batch_losses(
            output, labels, has_semantic, run.model_config, weights, stage, pos_weight
        )
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        rows += labels.shape[0]
        for name, value in terms.items():
            sums[name] += float(value.detach()) * labels.shape[0]
    return {name: total / max(rows, 1) for name, total in sums.items()}, rows


def evaluate(run: _Run, name: str) -> tuple[dict[str, float], int]:
    """Visual-only metrics of the whole dataset ``name`` (rank 0; {} when it has no rows)."""
    module = run.module
    module.eval()
    logits, labels = [], []
    batches = ray.train.get_dataset_shard(name).iter_torch_batches(
        batch_size=run.config.optimization.batch_size, collate_fn=run.eval_collate
    )
    with torch.no_grad():
        for batch in batches:
            visual = batch["visual"].to(run.device, non_blocking=True)
            mask = batch["visual_mask"].to(run.device, non_blocking=True)
            with run.autocast():
                logits.append(module.predict(visual, mask).float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    if not logits:
        return {}, 0
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return classification_metrics(logits, labels, run.model_config.task), len(labels)


# Failure injection for the fault tests, read from the environment (never a config field):
# CRIF_TEST_FAIL_AT_EPOCH=N and CRIF_TEST_FAIL_KIND=raise|kill. build_trainer forwards every
# CRIF_TEST_* variable of the driver to the workers (RunConfig.worker_runtime_env).
TEST_ENV_PREFIX = "CRIF_TEST_"
FAIL_AT_EPOCH_ENV = "CRIF_TEST_FAIL_AT_EPOCH"
FAIL_KIND_ENV = "CRIF_TEST_FAIL_KIND"
FAIL_KINDS = ("raise", "kill")


def _maybe_fail(config: TrainConfig, epoch: int, rank: int, world_size: int) -> None:
    """Failure injection for tests, once per run directory: at epoch $CRIF_TEST_FAIL_AT_EPOCH
    rank 0 raises ("raise", the default of $CRIF_TEST_FAIL_KIND) or the last rank's process
    kills itself with SIGKILL ("kill": a lost worker)."""
    at_epoch = os.environ.get(FAIL_AT_EPOCH_ENV)
    kind = os.environ.get(FAIL_KIND_ENV, "raise")
    if at_epoch is None:
        return
    if kind not in FAIL_KINDS:
        raise ValueError(f"{FAIL_KIND_ENV} must be one of {FAIL_KINDS}, got {kind!r}")
    failing_rank = world_size - 1 if kind == "kill" else 0
    if int(at_epoch) != epoch or rank != failing_rank:
        return
    marker = Path(config.out) / ".injected_failure"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    if kind == "kill":
        # Ray Train's controller collects reports when it polls the workers (every
        # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default); a worker lost before the poll
        # loses what it reported since, and the group resumes from the checkpoint before.
        # The kill waits two polls, so the last epoch's checkpoint is the one resumed from.
        interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))
        time.sleep(2 * interval + 0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure at epoch {epoch} ({FAIL_AT_EPOCH_ENV}, first attempt)")


def _with_test_environment(run_config: RunConfig) -> RunConfig:
    """``run_config`` whose workers also see the driver's CRIF_TEST_* variables (if any)."""
    test_env = {k: v for k, v in os.environ.items() if k.startswith(TEST_ENV_PREFIX)}
    if not test_env:
        return run_config
    runtime_env = dict(run_config.worker_runtime_env or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **test_env}
    return dataclasses.replace(run_config, worker_runtime_env=runtime_env)


def train_loop(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The training function of every Ray Train worker (and of local mode).

    Returns the final split metrics, row counts, per-epoch history and resume count."""
    config = TrainConfig.from_dict(loop_config)
    # A Ray Train worker's process has no console for the pipeline logger: give it one.
    ensure_logging(worker=config.resources.num_workers > 0)
    run = _start(config)
    state = _restore(run)
    plan = stage_plan(run.config, run.model_config)
    epochs = len(plan)
    optimizer = scheduler = None
    for epoch in range(state["next_epoch"], epochs):
        _maybe_fail(run.config, epoch, run.rank, run.world_size)
        stage = plan[epoch]
        if optimizer is None or (epoch > 0 and plan[epoch - 1] != stage):
            optimizer, scheduler = _optimizer(run, stage, state if optimizer is None else None)
        started = time.time()
        lr = optimizer.param_groups[0]["lr"]
        losses, rows = _train_epoch(run, optimizer, stage, epoch)
        scheduler.step()
        val = evaluate(run, "val")[0] if run.rank == 0 else {}
        entry = dict(epoch=epoch, stage=stage or "end2end", lr=lr, rows=rows, train=losses, val=val)
        entry["seconds"] = round(time.time() - started, 3)
        state["history"].append(entry)
        if run.rank == 0:
            logger.info(_progress_line(entry, epochs))
        train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        _report_epoch(run, state, {**train_state, "stage": stage}, entry)
    splits, rows = {}, {}
    if run.rank == 0:
        for name, key in (("train", "train_eval"), ("val", "val"), ("test", "test")):
            metrics, count = evaluate(run, key)
            if count:
                splits[name], rows[name] = metrics, count
    final = {"epoch": epochs - 1, "final": True, "splits": splits}
    ray.train.report(final)
    # Rank 0's return value reaches the driver as Result.return_value.
    return {**final, "rows": rows, "history": state["history"], "resumes": state["resumes"]}


# ---------------------------------------------------------------------------- checkpoints


def _local_root(config: TrainConfig) -> Path:
    return Path(config.out).resolve() / "train" / "local"


def _checkpoint_info(run: _Run, epoch: int, state: dict) -> dict[str, Any]:
    """Everything besides the weights that scoring needs: model config, classes, extractors."""
    used = ["visual"] + ([run.config.semantic_modality] if run.config.semantic_modality else [])
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model_config": run.model_config.to_dict(),
        "task": run.model_config.task,
        "class_names": list(run.metadata["class_names"]),
        "dataset": run.metadata["name"],
        "semantic": run.config.semantic_modality,
        "modalities": {name: run.metadata["modalities"][name] for name in used},
        "train_config": run.config.to_flat(),  # flat names, as older checkpoints
        "history": state["history"],
        "resumes": state["resumes"],
    }


def _write_checkpoint(directory: Path, run: _Run, info: dict, train_state: dict) -> None:
    write_checkpoint(directory, run.module.state_dict(), info, train_state)


def _report_epoch(run: _Run, state: dict, train_state: dict, entry: dict) -> None:
    """ray.train.report per epoch; rank 0 attaches the checkpoint."""
    metrics = {key: entry[key] for key in ("epoch", "lr", "rows", "train", "val")}
    metrics["stage"] = str(entry["stage"])
    if run.rank != 0:
        ray.train.report(metrics)
        return
    info = _checkpoint_info(run, entry["epoch"], state)
    name = f"checkpoint_epoch={entry['epoch']:04d}"
    if not run.local_mode:
        with tempfile.TemporaryDirectory() as directory:
            _write_checkpoint(Path(directory), run, info, train_state)
            checkpoint = Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        return
    root = _local_root(run.config)
    staging = root / f".{name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    _write_checkpoint(staging, run, info, train_state)
    shutil.rmtree(root / name, ignore_errors=True)
    staging.rename(root / name)  # whole checkpoints only, as Ray's storage would
    for old in sorted(root.glob("checkpoint_epoch=*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(root / name)))


def _latest_local_checkpoint(config: TrainConfig) -> Checkpoint | None:
    found = sorted(_local_root(config).glob("checkpoint_epoch=*"))
    return Checkpoint.from_directory(str(found[-1])) if found else None


def _latest_checkpoint(run: _Run) -> Checkpoint | None:
    if run.local_mode:
        return _latest_local_checkpoint(run.config)
    return ray.train.get_checkpoint()


def _restore(run: _Run) -> dict[str, Any]:
    """Load the latest checkpoint into the model; the loop's state to continue from."""
    state: dict[str, Any] = {"next_epoch": 0, "history": [], "resumes": 0}
    checkpoint = _latest_checkpoint(run)
    if checkpoint is None:
        return state
    contents = read_checkpoint(checkpoint, device=run.device, train_state=True)
    info = contents.info
    if info["model_config"] != run.model_config.to_dict():
        raise ValueError(
            f"{run.config.out} holds a checkpoint of another model config; "
            "use a new out directory (or the original flags) to resume"
        )
    run.module.load_state_dict(contents.weights)
    state.update(contents.train_state)
    state.update(next_epoch=info["epoch"] + 1, history=info["history"])
    state["resumes"] = info["resumes"] + 1
    if run.rank == 0:
        logger.info(f"resuming after epoch {info['epoch'] + 1} from {checkpoint.path}")
    return state


def _progress_line(entry: dict[str, Any], epochs: int) -> str:
    losses = " ".join(f"{k} {v:.4f}" for k, v in entry["train"].items() if k != "total")
    val = " ".join(f"{k} {v:.3f}" for k, v in entry["val"].items())
    return (
        f"epoch {entry['epoch'] + 1}/{epochs} [{entry['stage']}] lr {entry['lr']:.1e} "
        f"loss {entry['train'].get('total', float('nan')):.4f} ({losses}) | val {val or '-'} "
        f"| {entry['rows']} rows {entry['seconds']:.1f}s"
    )


def split_description(store: StoreSplits) -> str:
    """``split sizes: train N, val N, test N`` and where val comes from (or that it is absent)."""
    line = split_sizes(store.split_counts)
    if store.val_fraction:
        return f"{line} (val: {store.val_fraction:g} of the store's train videos held out)"
    if not store.split_counts["val"]:
        return f"{line} (no val split: no val metric; val_fraction holds out train videos)"
    return line


def metrics_document(
    config: TrainConfig, final: dict[str, Any], store: StoreSplits
) -> dict[str, Any]:
    """The RUN_DIR/metrics.json document from the loop's final report."""
    return {
        "task": store.task,
        "splits": final["splits"],
        "history": final["history"],
        "config": asdict(config),
        "model_config": model_config_for(config, store.metadata).to_dict(),
        "data": {
            "features": str(config.features),
            "split_counts": store.split_counts,  # as trained: after the val hold-out
            "rows_scored": final["rows"],
            "val_fraction": store.val_fraction,
            "val_held_out_from_train": store.holdout,  # older readers: val_fraction > 0
            "files_without_semantic": len(store.files_without_semantic),
        },
        "model": "model",  # RUN_DIR/model: the last epoch's checkpoint
        "resumes": final["resumes"],
    }


# ---------------------------------------------------------------------------- trainer


def default_run_config(config: TrainConfig) -> RunConfig:
    """Checkpoints under RUN_DIR/train; a re-run with the same ``out`` resumes there."""
    return RunConfig(
        storage_path=str(Path(config.out).resolve()),
        name="train",
        failure_config=FailureConfig(max_failures=config.resources.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
    )


def build_trainer(
    config: TrainConfig,
    *,
    datasets: dict[str, Any] | None = None,
    run_config: RunConfig | None = None,
) -> TorchTrainer:
    """THE TorchTrainer of the project (jobs/train.py, the benchmark and tuning use it).

    ``datasets`` defaults to the store's splits (``pipeline.train.data.read_datasets``: in memory
    when the store is below ``materialize_below_mb``); ``run_config`` defaults
    to ``default_run_config`` (Tune passes its own storage path and name).
    """
    config = config.resolved()
    model_config_for(config, read_dataset_json(config.features))  # refused before any worker
    if datasets is None:
        store = inspect_store(config.features, config.semantic_modality, config.val_fraction)
        datasets = read_datasets(store, config.resources.materialize_below_mb)
    resources = {
        "CPU": config.resources.cpus_per_worker,
        **({"GPU": 1} if config.resources.use_gpu else {}),
    }
    return TorchTrainer(
        train_loop,
        train_loop_config=asdict(config),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.resources.num_workers,
            use_gpu=config.resources.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=_with_test_environment(run_config or default_run_config(config)),
        datasets={**datasets, "train_eval": datasets["train"]},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def run_training(config: TrainConfig, *, datasets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole job: train, export RUN_DIR/model, write metrics.json and the curves.

    ``datasets`` defaults to the store's splits; a caller that trains many models on one
    store (the experiment grids) passes them read once (``Dataset.materialize``)."""
    from pipeline.common.plots import plot_learning_curves

    config = config.resolved()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    store = inspect_store(config.features, config.semantic_modality, config.val_fraction)
    logger.info(f"{config.features}: {split_description(store)}")
    if datasets is None:
        datasets = read_datasets(store, config.resources.materialize_below_mb)
    result = build_trainer(config, datasets=datasets).fit()
    # Local mode's result carries the last report's checkpoint: the final report has none.
    checkpoint = result.checkpoint or _latest_local_checkpoint(config)
    model_dir = export_model(checkpoint, out / "model")
    document = metrics_document(config, result.return_value, store)
    atomic_write_json(out / "metrics.json", document)
    plot_learning_curves(document["history"], out / "learning_curves.png")
    return {
        "out": str(out),
        "model": str(model_dir),
        "metrics_path": str(out / "metrics.json"),
        "metrics": document,
    }
