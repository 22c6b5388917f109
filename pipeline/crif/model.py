"""CRIF: cross-modal inference and fusion for video classification, in plain torch (no Ray).

    config = CRIFConfig(num_classes=20, visual_dim=1024, semantic_dim=384)
    model = build_model(config)
    output = model(visual, visual_mask, semantic, semantic_mask)  # training: every branch
    terms = crif_losses(output, labels, config, LossWeights())     # pipeline.crif.losses
    logits = model.predict(visual, visual_mask)                    # inference: video only

Information flow (paper section III, eqs. 1-3, 6-9, 14, 16):

    visual    x = backbone_v(V)  x_a = E_x^s(x)  x_c = Clip_x(x_a)  t_r = D_t^r(E_t^r(x_a))
    semantic  t = backbone_t(T)  t_a = E_t^s(t)  t_c = Clip_t(t_a)  (training only)
    fused     F_mix = tau(tau(x_c) (+) tau(t_r))                    (+) in FUSIONS

The semantic modality is privileged information: the visual path never reads it, so
``predict`` needs only the video. Ablations (paper Tables III and IV) build these branches:

    baseline   visual path only, logits from x_c            losses: L_class
    align      + semantic branch (L_sim, L_align)           logits from x_c
    inference  + semantic inference t_r with L_recon        logits from t_r (its own head)
    fusion     align + fusion of x_c and t_r (t_r trained by L_mix only, no L_recon; Table IV)
    full       everything (the paper's CRIF), logits from the fusion head

The predicting head of each ablation is its last module: +Inference predicts from t_r, as the
paper's Table III +Inference value is the Inference column of its Table V.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.common.configs import check_choices
from pipeline.store import Task

__all__ = [
    "ABLATIONS",
    "PREDICTIONS",
    "SEMANTIC_GRADIENTS",
    "STRATEGIES",
    "ALIGN_FUNCTIONS",
    "ALIGN_TARGETS",
    "BACKBONES",
    "Ablation",
    "AlignFunction",
    "AlignTarget",
    "Backbone",
    "FusionOperator",
    "CRIF",
    "CRIFConfig",
    "CRIFOutput",
    "FUSIONS",
    "Fusion",
    "FusionHead",
    "GRUBackbone",
    "InputStandardizer",
    "SequenceBackbone",
    "TASKS",
    "ViltBackbone",
    "ablation_branches",
    "multistage_stages",
    "predicting_head",
    "build_backbone",
    "build_model",
    "training_stages",
]

Ablation = Literal["baseline", "align", "inference", "fusion", "full"]
FusionOperator = Literal["concat", "plus", "mult", "max", "min"]
Backbone = Literal["gru", "vilt"]
AlignFunction = Literal["coral", "l2", "kl", "ssan"]  # implemented in pipeline.crif.losses
AlignTarget = Literal["clip", "whole"]
# "stop": the semantic side is a fixed teacher in L_sim / L_align (gradients stop there);
# "flow": the paper's symmetric eqs. 10 and 13, both sides move.
SemanticGradients = Literal["stop", "flow"]
Prediction = Literal["auto", "visual", "inferred", "fused"]
Strategy = Literal["end2end", "multistage"]  # eq. 22, or the three stages of section III-F
ABLATIONS = get_args(Ablation)
FUSIONS = get_args(FusionOperator)
BACKBONES = get_args(Backbone)
TASKS = get_args(Task)
ALIGN_FUNCTIONS = get_args(AlignFunction)
ALIGN_TARGETS = get_args(AlignTarget)
SEMANTIC_GRADIENTS = get_args(SemanticGradients)
PREDICTIONS = get_args(Prediction)
STRATEGIES = get_args(Strategy)

# Which optional branches each ablation builds (and so which loss terms it has).
_BRANCHES = {
    "baseline": frozenset(),
    "align": frozenset({"semantic"}),
    "inference": frozenset({"semantic", "inference", "recon"}),
    "fusion": frozenset({"semantic", "inference", "fusion"}),
    "full": frozenset({"semantic", "inference", "recon", "fusion"}),
}
# The head each ablation predicts with (``prediction="auto"``).
_PREDICTING_HEAD = {
    "baseline": "visual",
    "align": "visual",
    "inference": "inferred",
    "fusion": "fused",
    "full": "fused",
}
_HEAD_BRANCH = {"visual": None, "inferred": "recon", "fused": "fusion"}
# [CLS] in the BERT uncased vocabulary that ViLT's tokenizer uses; the random ViLT gets a
# vocabulary just large enough to hold it, so one id serves both.
VILT_CLS_TOKEN_ID = 101


def ablation_branches(ablation: str) -> frozenset[str]:
    """The optional branches of an ablation: subset of {semantic, inference, recon, fusion}."""
    if ablation not in _BRANCHES:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    return _BRANCHES[ablation]


@dataclass(frozen=True)
class CRIFConfig:
    num_classes: int
    visual_dim: int = 1024
    semantic_dim: int = 384  # 0 only for ablation "baseline" (no semantic branch)
    task: Task = "single_label"
    backbone: Backbone = "gru"
    hidden_dim: int = 256  # backbone output width (x, t, t_r)
    shared_dim: int = 256  # distributional alignment space (x_a, t_a); also the fusion width
    rho: int = 128  # width of the key part x_c, t_c
    fusion: FusionOperator = "concat"
    ablation: Ablation = "full"
    align_fn: AlignFunction = "coral"
    # "clip": align x_c/t_c (CRIF); "whole": x_a/t_a (Table V "Align")
    align_target: AlignTarget = "clip"
    # stop: the semantic side is a fixed teacher in L_sim/L_align; flow: eqs. 10/13 as written
    semantic_gradients: SemanticGradients = "stop"
    semantic_loss: bool = True  # L_semantic (CE on t_c) in L_1; eq. 20 has none
    prediction: Prediction = "auto"  # predicting head; auto: the ablation's last module
    dropout: float = 0.1
    context_gating: bool = False  # GRU option
    vilt_layers: int = 2
    vilt_heads: int = 4
    vilt_hidden: int = 128
    vilt_intermediate: int = 256
    max_positions: int = 512  # temporal position embeddings for ViLT
    vilt_pretrained: str | None = None  # local from_pretrained directory; sets the ViLT size

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("num_classes", "visual_dim", "hidden_dim", "shared_dim", "rho"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.semantic_dim < 0 or (self.semantic_dim == 0 and self.ablation != "baseline"):
            raise ValueError(f"ablation {self.ablation!r} needs semantic_dim >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.vilt_pretrained is None and self.vilt_hidden % self.vilt_heads:
            raise ValueError("vilt_hidden must be divisible by vilt_heads")
        branch = _HEAD_BRANCH[predicting_head(self.ablation, self.prediction)]
        if branch is not None and branch not in ablation_branches(self.ablation):
            raise ValueError(f"ablation {self.ablation!r} has no {self.head} head to predict with")

    @property
    def head(self) -> str:
        """The head ``predict`` uses: visual (x_c), inferred (t_r) or fused."""
        return predicting_head(self.ablation, self.prediction)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CRIFConfig:
        """Also reads the form of older checkpoints: ``detach_semantic`` (a bool) instead of
        ``semantic_gradients``, and +Inference models then predicted from x_c."""
        d = dict(d)
        if "detach_semantic" in d:
            d["semantic_gradients"] = "stop" if d.pop("detach_semantic") else "flow"
            d.setdefault("prediction", "visual" if d.get("ablation") == "inference" else "auto")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown CRIFConfig fields: {sorted(unknown)}")
        return cls(**d)


@dataclass
class CRIFOutput:
    """Tensors (B, ...); None where the ablation or a missing semantic input has no branch."""

    logits: Tensor  # (B, C) inference prediction: the head of ``CRIFConfig.head``
    logits_visual: Tensor  # (B, C) classifier on x_c (L_class)
    x_a: Tensor  # (B, shared_dim)
    x_c: Tensor  # (B, rho)
    x: Tensor | None = None  # (B, hidden_dim) visual backbone output (standardised input)
    t_r: Tensor | None = None  # (B, hidden_dim) semantic feature inferred from the video
    logits_recon: Tensor | None = None  # (B, C) classifier on t_r (L_recon)
    logits_fused: Tensor | None = None  # (B, C) classifier on F_mix (L_mix)
    t_a: Tensor | None = None  # (B, shared_dim)
    t_c: Tensor | None = None  # (B, rho)
    t: Tensor | None = None  # (B, hidden_dim) semantic backbone vector, target of t_r
    logits_semantic: Tensor | None = None  # (B, C) classifier on t_c (train-time only)


# ----------------------------------------------------------------------------- backbones


class SequenceBackbone(nn.Module):
    """Maps a padded sequence (B, T, D) and its mask (B, T) bool (True = valid) to (B, hidden)."""

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


class GRUBackbone(SequenceBackbone):
    """GRU over the valid prefix of each sequence; its last hidden state, optionally gated.

    Masks must be left-aligned (valid steps first). An all-padding row gives a zero vector.
    Context gating (Miech et al., "Learnable pooling with context gating"):
    y = h * sigmoid(W h + b).
    """

    def __init__(self, input_dim: int, hidden_dim: int, *, context_gating: bool = False):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, batch_first=True)
        self.gate = nn.Linear(hidden_dim, hidden_dim) if context_gating else None

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        mask = mask.bool()
        lengths = mask.sum(dim=1)  # (B,)
        steps = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, steps[None, :] < lengths[:, None]):
            raise ValueError("GRU backbone needs left-aligned masks (valid steps first)")
        packed = pack_padded_sequence(
            sequence, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.gru(packed)  # (1, B, H), in the original batch order
        hidden = last[-1] * (lengths > 0).unsqueeze(1).to(last.dtype)  # (B, H)
        if self.gate is not None:
            hidden = hidden * torch.sigmoid(self.gate(hidden))
        return hidden


class ViltBackbone(SequenceBackbone):
    """ViLT-style single-stream transformer (transformers' ViltModel) over a feature sequence.

    The sequence is projected to ViLT's width, given learned temporal position embeddings
    (ViltModel adds none to ``image_embeds``; it adds only its image modality-type embedding)
    and passed as ``image_embeds`` with ``pixel_mask`` (B, T); the text side is one [CLS] token.
    The pooled [CLS] output is projected to ``hidden_dim``. ViLT's own patch projection and
    image position/cls parameters are unused with ``image_embeds`` and are frozen, so DDP
    needs no ``find_unused_parameters``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, config: CRIFConfig):
        super().__init__()
        self.vilt = _build_vilt(config)
        width = self.vilt.config.hidden_size
        self.projection = nn.Linear(input_dim, width)
        self.positions = nn.Parameter(torch.randn(1, config.max_positions, width) * 0.02)
        self.output = nn.Linear(width, hidden_dim)
        embeddings = self.vilt.embeddings
        unused = [embeddings.cls_token, embeddings.position_embeddings]
        for parameter in [*unused, *embeddings.patch_embeddings.parameters()]:
            parameter.requires_grad_(False)
        self.register_buffer("cls_ids", torch.tensor([[VILT_CLS_TOKEN_ID]]), persistent=False)

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        batch, steps, _ = sequence.shape
        if steps > self.positions.shape[1]:
            raise ValueError(f"sequence of {steps} steps exceeds max_positions")
        tokens = self.projection(sequence) + self.positions[:, :steps]  # (B, T, W)
        ids = self.cls_ids.expand(batch, 1)  # (B, 1)
        out = self.vilt(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            image_embeds=tokens,
            pixel_mask=mask.long(),  # (B, T): ViltEmbeddings flattens it into the image mask
        )
        return self.output(out.pooler_output)  # (B, W) -> (B, H)


def _build_vilt(config: CRIFConfig) -> nn.Module:
    from transformers import ViltConfig, ViltModel  # deferred: heavy import, ViLT only

    if config.vilt_pretrained is not None:
        if not Path(config.vilt_pretrained).is_dir():
            raise FileNotFoundError(
                f"vilt_pretrained directory not found: {config.vilt_pretrained}"
            )
        return ViltModel.from_pretrained(config.vilt_pretrained)
    vilt_config = ViltConfig(
        vocab_size=VILT_CLS_TOKEN_ID + 1,
        max_position_embeddings=1,  # one text token
        hidden_size=config.vilt_hidden,
        num_hidden_layers=config.vilt_layers,
        num_attention_heads=config.vilt_heads,
        intermediate_size=config.vilt_intermediate,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        image_size=1,  # the patch projection is unused (image_embeds); keep it tiny
        patch_size=1,
        num_channels=1,
    )
    return ViltModel(vilt_config)


class InputStandardizer(nn.Module):
    """Per-feature standardisation of an input sequence with statistics learned from data.

    Extracted features can sit far from zero with little spread (random-weight S3D: mean |x|
    0.77, spread 0.1 across videos), which a GRU or a transformer learns from slowly. In
    training mode each batch's valid time steps (mask True) update an exact running mean and
    variance (all batches weigh by their row count; under DDP, the global batch's); the input
    is then standardised with those statistics, in training and inference alike, so both see
    the same transform. They are buffers: they travel in the checkpoint, and scoring uses the
    training-set statistics.
    Before any data has been seen the transform is the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("second_moment", torch.ones(dim, dtype=torch.float64))

    def forward(self, sequence: Tensor, mask: Tensor) -> Tensor:
        if self.training:
            self._update(sequence.detach()[mask])  # (N_valid, D)
        variance = (self.second_moment - self.mean**2).clamp_min(0)
        scale = (variance + self.eps).rsqrt().to(sequence.dtype)
        return (sequence - self.mean.to(sequence.dtype)) * scale * mask.unsqueeze(-1)

    @torch.no_grad()
    def _update(self, rows: Tensor) -> None:
        rows = rows.to(torch.float64)
        # count, sum and sum of squares of this batch; under DDP, of the global batch (every
        # rank runs forward in lock step, as with SyncBatchNorm), so all ranks keep the same
        # statistics and a 2-worker run standardises like a 1-worker run on the same rows.
        sums = torch.cat([rows.new_tensor([rows.shape[0]]), rows.sum(0), (rows**2).sum(0)])
        if _distributed():
            torch.distributed.all_reduce(sums)
        count, dim = sums[0], self.mean.shape[0]
        if count == 0:
            return
        total = self.count + count
        weight = count / total
        self.mean.mul_(1 - weight).add_(sums[1 : 1 + dim] / count * weight)
        self.second_moment.mul_(1 - weight).add_(sums[1 + dim :] / count * weight)
        self.count.copy_(total)


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def build_backbone(kind: str, input_dim: int, config: CRIFConfig) -> SequenceBackbone:
    if kind == "gru":
        return GRUBackbone(input_dim, config.hidden_dim, context_gating=config.context_gating)
    if kind == "vilt":
        return ViltBackbone(input_dim, config.hidden_dim, config)
    raise ValueError(f"backbone must be one of {BACKBONES}, got {kind!r}")


# ----------------------------------------------------------------------------- heads


def _tau(in_dim: int, out_dim: int) -> nn.Module:
    """The paper's tau: a fully connected layer followed by ReLU."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())


def _shared_encoder(in_dim: int, out_dim: int) -> nn.Module:
    """E^s: linear map into the shared space, then LayerNorm without affine parameters.

    The two backbones have unrelated scales; normalising both sides makes ||x_a - t_a||_2 a
    scale-free ("normalized") distance and stops L_sim from shrinking the space to zero.
    """
    return nn.Sequential(
        nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim, elementwise_affine=False)
    )


def _classifier(in_dim: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))


_FUSION_OPERATORS = {
    "concat": lambda a, b: torch.cat((a, b), dim=-1),
    "plus": torch.add,
    "mult": torch.mul,
    "max": torch.maximum,
    "min": torch.minimum,
}


class Fusion(nn.Module):
    """F_mix = tau(tau(x_c) (+) tau(t_r)), (+) = concat (eq. 16) or an elementwise operator."""

    def __init__(self, visual_dim: int, inferred_dim: int, width: int, operator: str):
        super().__init__()
        self.operator = operator
        self.visual = _tau(visual_dim, width)
        self.inferred = _tau(inferred_dim, width)
        self.mix = _tau(2 * width if operator == "concat" else width, width)

    def forward(self, x_c: Tensor, t_r: Tensor) -> Tensor:
        combined = _FUSION_OPERATORS[self.operator](self.visual(x_c), self.inferred(t_r))
        return self.mix(combined)  # (B, width)


class FusionHead(nn.Module):
    """A fusion classifier over any set of features: f(tau(cat(tau(a), tau(b), ...))), the
    fusion of eq. 16 generalised to N inputs. The paper grids train one per modality set of
    Table V's fused columns (V+S, V+I, S+I, V+S+I) on a trained model's frozen features."""

    def __init__(self, widths: tuple[int, ...], width: int, num_classes: int, dropout: float):
        super().__init__()
        self.inputs = nn.ModuleList(_tau(w, width) for w in widths)
        self.mix = _tau(width * len(widths), width)
        self.head = _classifier(width, num_classes, dropout)

    def forward(self, *features: Tensor) -> Tensor:
        parts = [encode(f) for encode, f in zip(self.inputs, features, strict=True)]
        return self.head(self.mix(torch.cat(parts, dim=-1)))  # (B, C)


# ----------------------------------------------------------------------------- model


class CRIF(nn.Module):
    def __init__(self, config: CRIFConfig):
        super().__init__()
        self.config = c = config
        branches = ablation_branches(c.ablation)
        self.visual_input = InputStandardizer(c.visual_dim)
        self.visual_backbone = build_backbone(c.backbone, c.visual_dim, c)
        self.visual_shared = _shared_encoder(c.hidden_dim, c.shared_dim)  # E_x^s
        self.visual_clip = _tau(c.shared_dim, c.rho)  # E_x^c: Clip(x_a, rho), the key part
        self.visual_head = _classifier(c.rho, c.num_classes, c.dropout)
        self.semantic_backbone = self.semantic_shared = None
        self.semantic_clip = self.semantic_head = None
        self.semantic_input = None
        if "semantic" in branches:  # its own backbone instance: never shared with the video
            self.semantic_input = InputStandardizer(c.semantic_dim)
            self.semantic_backbone = build_backbone(c.backbone, c.semantic_dim, c)
            self.semantic_shared = _shared_encoder(c.hidden_dim, c.shared_dim)  # E_t^s
            self.semantic_clip = _tau(c.shared_dim, c.rho)  # E_t^c
            self.semantic_head = _classifier(c.rho, c.num_classes, c.dropout)
        self.inference_encoder = self.inference_decoder = self.recon_head = None
        if "inference" in branches:  # x_a -> E_t^r -> D_t^r -> t_r in the semantic backbone space
            self.inference_encoder = _tau(c.shared_dim, c.shared_dim)
            self.inference_decoder = nn.Linear(c.shared_dim, c.hidden_dim)
        if "recon" in branches:
            self.recon_head = _classifier(c.hidden_dim, c.num_classes, c.dropout)
        self.fusion = self.fused_head = None
        if "fusion" in branches:
            self.fusion = Fusion(c.rho, c.hidden_dim, c.shared_dim, c.fusion)
            self.fused_head = _classifier(c.shared_dim, c.num_classes, c.dropout)

    def forward(
        self,
        visual: Tensor,
        visual_mask: Tensor,
        semantic: Tensor | None = None,
        semantic_mask: Tensor | None = None,
    ) -> CRIFOutput:
        output = self._visual_path(visual, visual_mask)
        if semantic is None or self.semantic_backbone is None:
            return output
        if semantic_mask is None:
            raise ValueError("semantic_mask is required with a semantic input")
        semantic = self.semantic_input(semantic, semantic_mask)  # (B, N, D_s) standardised
        t = self.semantic_backbone(semantic, semantic_mask)  # (B, H)
        t_a = self.semantic_shared(t)  # (B, S)
        t_c = self.semantic_clip(t_a)  # (B, rho)
        logits_semantic = self.semantic_head(t_c)  # (B, C)
        return dataclasses.replace(output, t=t, t_a=t_a, t_c=t_c, logits_semantic=logits_semantic)

    def _visual_path(self, visual: Tensor, visual_mask: Tensor) -> CRIFOutput:
        visual = self.visual_input(visual, visual_mask)  # (B, T, D) standardised
        x = self.visual_backbone(visual, visual_mask)  # (B, H)
        x_a = self.visual_shared(x)  # (B, S)
        x_c = self.visual_clip(x_a)  # (B, rho)
        logits_visual = self.visual_head(x_c)  # (B, C)
        t_r = logits_recon = logits_fused = None
        if self.inference_encoder is not None:
            t_r = self.inference_decoder(self.inference_encoder(x_a))  # (B, H)
        if self.recon_head is not None:
            logits_recon = self.recon_head(t_r)  # (B, C)
        if self.fusion is not None:
            logits_fused = self.fused_head(self.fusion(x_c, t_r))  # (B, C)
        heads = {"visual": logits_visual, "inferred": logits_recon, "fused": logits_fused}
        logits = heads[self.config.head]
        return CRIFOutput(logits, logits_visual, x_a, x_c, x, t_r, logits_recon, logits_fused)

    def predict(self, visual: Tensor, visual_mask: Tensor) -> Tensor:
        """Logits (B, C) from the video alone. Set eval() / no_grad() as the caller needs."""
        return self._visual_path(visual, visual_mask).logits

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Trainable parameters a multistage run trains at ``stage`` (stage 2 adds stage 1's).

        1: both backbones, E^s, Clip and the visual and semantic classifiers (L_1);
        2: E_t^r, D_t^r and the recon classifier (L_2);  3: the fusion taus and fused classifier
        (L_mix). Under ablation "fusion" (no L_recon) E_t^r and D_t^r move to stage 3, the first
        loss that trains them. L_align (stage 2) reaches only stage-1 modules, so it acts only
        if the trainer keeps earlier stages trainable. A model that predicts with the visual
        head refits that head alone in stage 3, on the features stage 2 left (it is then in
        stages 1 and 3; otherwise the stages are a partition).
        """
        inference = [self.inference_encoder, self.inference_decoder]
        refit = self.config.head == "visual" and 3 in training_stages(self.config)
        groups = {
            1: [self.visual_backbone, self.visual_shared, self.visual_clip, self.visual_head]
            + [
                self.semantic_backbone,
                self.semantic_shared,
                self.semantic_clip,
                self.semantic_head,
            ],
            2: [*inference, self.recon_head] if self.recon_head is not None else [],
            3: [self.fusion, self.fused_head]
            + (inference if self.recon_head is None else [])
            + ([self.visual_head] if refit else []),
        }
        if stage not in groups:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        modules = [module for module in groups[stage] if module is not None]
        return [p for module in modules for p in module.parameters() if p.requires_grad]


def predicting_head(ablation: str, prediction: str = "auto") -> str:
    """The head a model predicts with: visual (x_c), inferred (t_r) or fused."""
    ablation_branches(ablation)  # validates
    return _PREDICTING_HEAD[ablation] if prediction == "auto" else prediction


def multistage_stages(ablation: str, prediction: str = "auto") -> tuple[int, ...]:
    """The stages of a multistage run (paper section III-F):

    1  L_1: the visual and semantic encoders and their classifiers (always);
    2  L_2 = L_recon + alpha_align L_align, with a semantic branch; stage 1's modules stay
       trainable (L_align reaches only them);
    3  the predicting head on the features stage 2 left: L_mix for the fusion head, or, for a
       model that predicts with the visual head, L_class on that head alone. Stage 2 moves the
       visual features after stage 1 trained its classifier, so without this refit that head
       would be stale. A model predicting from t_r has its head trained in stage 2 (L_recon).
    """
    branches = ablation_branches(ablation)
    if "semantic" not in branches:
        return (1,)
    head = predicting_head(ablation, prediction)
    refit = "fusion" in branches or head == "visual"
    return (1, 2, 3) if refit else (1, 2)


def training_stages(config: CRIFConfig) -> tuple[int, ...]:
    """``multistage_stages`` of a model config."""
    return multistage_stages(config.ablation, config.prediction)


def build_model(config: CRIFConfig) -> CRIF:
    return CRIF(config)
