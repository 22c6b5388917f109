"""S3D visual features: 1024-d per clip, torchvision's S3D with the classifier removed.

    extractor = S3DExtractor(S3DConfig(weights="random", clip_len=16, clip_stride=16))
    plans = extractor.clip_plan(num_frames=300, native_fps=30.0)   # which frames, per clip
    clip = extractor.preprocess(frames_uint8)                        # (L, 224, 224, 3) uint8
    features = extractor(np.stack([clip]))                           # (1, 1024) float32

The work is split so a pipeline can decode and preprocess on CPU workers and ship uint8
(4x smaller than float) to the model workers; normalisation happens on the model's device.
The preprocessing (15 fps, resize 256x256, centre crop 224, Kinetics mean/std) is that of
torchvision's S3D_Weights.KINETICS400_V1, and it is all recorded in S3DConfig.

How the model runs is the extractor's `execution`, not part of the config: every mode gives
the eager features within 1e-6 relative (tests check 1e-3), so it is not recorded.

    S3DExtractor(config, execution="compile")    # CPU: AOTInductor package, cached on disk
    S3DExtractor(config, execution="auto", expected_clips=5000)

- "eager": torchvision's model as is (channels_last_3d when config.channels_last).
- "channels_last": eager in channels_last_3d: about 2x eager on a CPU.
- "compile": CPU only. The channels-last model is exported once (torch.export) and compiled
  by AOTInductor with freezing (batch norm folded into the convolutions, weights pre-packed
  for oneDNN), about 3x eager. The package is cached on disk (`compile_cache_dir`), keyed by
  torch version, CPU capability, clip shape and a hash of the weights, so later processes,
  actors and runs load it in seconds; building it costs minutes once. (torch.compile itself
  cannot be cached on CPU with freezing: inductor bypasses its FX graph cache for the
  pre-packed oneDNN weights, so every process would pay the full compile.)
- "auto": "compile" when its package is already cached or the job is large enough to repay
  the build (`COMPILE_BREAK_EVEN_CLIPS`); otherwise "channels_last". On GPU: channels_last
  under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from feature_extractors.base import (
    ActorResources,
    ClipInputs,
    Extractor,
    load_state_dict_file,
    load_weights,
    register_extractor,
)
from feature_extractors.clip_plan import ClipPlan, plan_clips, plan_clips_at, preprocess_frames

__all__ = [
    "COMPILE_BREAK_EVEN_CLIPS",
    "EXECUTION_MODES",
    "KINETICS400_FILE_NAME",
    "RESIZE_METHODS",
    "ClipPlan",
    "S3DConfig",
    "S3DExtractor",
    "build_s3d_backbone",
    "compile_cache_dir",
    "compiled_package_path",
    "load_compiled_package",
    "normalize_clips",
    "plan_clips",
    "plan_clips_at",
    "preprocess_frames",
]

logger = logging.getLogger(__name__)

KINETICS400_FILE_NAME = "s3d-d76dad2f.pth"
# From S3D_Weights.KINETICS400_V1.meta: the final AvgPool3d(2, 7, 7) needs at least this.
MIN_CLIP_LEN = 14
MIN_CROP = 224
FEATURE_DIM = 1024

EXECUTION_MODES = ("auto", "eager", "channels_last", "compile")
RESIZE_METHODS = ("decoder", "exact")
# "auto" builds a compiled package when the job has at least this many clip units (one unit:
# a 64-frame 224x224 clip). Measured on a 2-core AVX2 CPU (benchmarks/s3d_cpu.py): the build
# costs ~60-90 s of both cores, and each unit then takes ~0.7 s less than channels_last.
COMPILE_BREAK_EVEN_CLIPS = 150
COMPILE_TOLERANCE = 1e-3  # a package whose features differ more from eager is refused


@dataclass(frozen=True)
class S3DConfig:
    """Weights and the exact preprocessing of the visual features (recorded in dataset.json).

    weights: "random" | "kinetics400" | path to a torchvision-format .pth state dict.
    fps: frames are resampled to this rate before clipping. resize: (H, W) before the crop.
    clip_len / clip_stride: frames per clip and the step between clip starts, in resampled
    frames. channels_last: run the model in torch.channels_last_3d memory format.
    resize_method: "decoder" scales frames inside the decoder (FFmpeg bilinear, fast; the
    form of records that do not name it); "exact" resizes the native frames like
    S3D_Weights.KINETICS400_V1.transforms() (bilinear, no antialiasing: see preprocess_frames).
    """

    weights: str = "random"
    fps: float = 15.0
    resize: tuple[int, int] = (256, 256)
    crop: int = 224
    mean: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
    std: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)
    clip_len: int = 64
    clip_stride: int = 64
    channels_last: bool = False
    resize_method: str = "decoder"

    def __post_init__(self) -> None:
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(f"resize_method must be one of {RESIZE_METHODS}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if self.clip_len < MIN_CLIP_LEN:
            raise ValueError(f"clip_len must be >= {MIN_CLIP_LEN} for S3D, got {self.clip_len}")
        if self.clip_stride < 1:
            raise ValueError(f"clip_stride must be >= 1, got {self.clip_stride}")
        if self.crop < MIN_CROP or self.crop > min(self.resize):
            raise ValueError(f"crop must be in [{MIN_CROP}, min(resize)], got {self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")


def normalize_clips(
    clips: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 (N, L, H, W, 3) -> float32 (N, 3, L, H, W): /255, then (x - mean) / std.

    The result is a permuted view (its strides are channels_last_3d); call .contiguous()
    for the default layout.
    """
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=clips.device)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=clips.device)
    scaled = clips.to(torch.float32) / 255.0  # (N, L, H, W, 3)
    normalized = (scaled - mean_tensor) / std_tensor
    return normalized.permute(0, 4, 1, 2, 3)  # (N, 3, L, H, W)


def build_s3d_backbone(weights: str) -> tuple[nn.Module, str]:
    """torchvision S3D without its classifier -> (module, description of the weights).

    The module maps (N, 3, L, H, W) normalised clips to (N, 1024): features, the
    AvgPool3d(2, 7, 7), then the mean over what is left of time and space (torchvision's
    own forward with the classifier replaced by the identity).
    """
    return load_weights(
        "s3d",
        weights,
        _headless_s3d,
        initialise=_he_initialised,
        ignore_prefixes=("classifier.",),
        named={"kinetics400": _load_kinetics400_state_dict},
    )


def _headless_s3d() -> nn.Module:
    from torchvision.models.video import s3d

    model = s3d(weights=None)
    model.classifier = nn.Identity()
    return model


def compile_cache_dir() -> Path:
    """$CRIF_CACHE_DIR/s3d, else $XDG_CACHE_HOME/crif-ray/s3d (default ~/.cache/crif-ray/s3d)."""
    root = os.environ.get("CRIF_CACHE_DIR")
    if not root:
        cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache_home) / "crif-ray"
    return Path(root) / "s3d"


def compiled_package_path(model: nn.Module, config: S3DConfig, cache_dir=None) -> Path:
    """Cache file of the compiled `model` for this clip shape, torch version, CPU and thread
    count (set torch.set_num_threads before building the extractor)."""
    digest = hashlib.sha256()
    meta = {
        "format": 1,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),  # inductor bakes the OpenMP team size into its kernels
        "input": [1, 3, config.clip_len, config.crop, config.crop],
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):  # the weights themselves
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    directory = Path(cache_dir) if cache_dir is not None else compile_cache_dir()
    shape = f"{config.clip_len}x{config.crop}-t{torch.get_num_threads()}"
    return directory / f"s3d-{shape}-{digest.hexdigest()[:16]}.pt2"


def load_compiled_package(model: nn.Module, config: S3DConfig, path: Path):
    """Load the AOTInductor package at `path`, building it first if absent (once: a file lock
    makes concurrent actors wait for one build). Returns a callable (1, 3, L, H, W) -> (1, 1024)."""
    import torch._inductor

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            _build_compiled_package(model, config, path)
    return torch._inductor.aoti_load_package(str(path))


def _build_compiled_package(model: nn.Module, config: S3DConfig, path: Path) -> None:
    """torch.export + AOTInductor (freezing) of the channels-last model; checked against eager."""
    import torch._inductor

    logger.warning("s3d: compiling the model for this CPU once (minutes); cached in %s", path)
    module = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last_3d)
    shape = (1, 3, config.clip_len, config.crop, config.crop)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    example = example.contiguous(memory_format=torch.channels_last_3d)
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.pt2")
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,))
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(temporary), inductor_configs={"freezing": True}
            )
            compiled = torch._inductor.aoti_load_package(str(temporary))
            expected, got = module(example), compiled(example)
        error = ((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
        if not error <= COMPILE_TOLERANCE:
            raise RuntimeError(f"compiled S3D differs from eager by {error:.2e} (relative)")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _he_initialised(model: nn.Module) -> nn.Module:
    """He (fan_in) init of every Conv3d, so random features keep unit scale.

    With eval-mode BatchNorm (identity statistics) PyTorch's default init shrinks the
    activations layer by layer to ~1e-7 at the output: useless even for plumbing tests.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    return model


def _load_kinetics400_state_dict() -> dict[str, torch.Tensor]:
    """The torchvision Kinetics-400 checkpoint from the torch hub cache (download if online)."""
    from torchvision.models.video import S3D_Weights

    checkpoint_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = checkpoint_dir / KINETICS400_FILE_NAME
    if cached.is_file():
        return load_state_dict_file(cached)
    try:
        return S3D_Weights.KINETICS400_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # offline: URLError, socket errors, hash mismatch...
        raise RuntimeError(
            f"S3D weights='kinetics400' need {KINETICS400_FILE_NAME}: not in the torch hub "
            f"cache ({cached}) and the download failed ({error}). Copy the file there, or "
            f"pass weights='/path/to/{KINETICS400_FILE_NAME}'."
        ) from error


@register_extractor
class S3DExtractor(Extractor):
    """Clips of RGB frames -> one 1024-d S3D feature per clip."""

    name = "s3d"
    modality = "visual"
    config_class = S3DConfig
    batch_size = 4  # clips per model call
    feature_dim = FEATURE_DIM
    # Two calls per actor: one decodes its video (fused into the actor on CPUs) while the
    # other holds the model; a lock keeps the model to one call at a time.
    resources = ActorResources(concurrent_calls=2, all_cores=True)

    def __init__(
        self,
        config: S3DConfig,
        device: str | torch.device = "cpu",
        *,
        execution: str = "eager",
        expected_clips: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        """`execution`: one of EXECUTION_MODES (module docstring); `expected_clips`: the job's
        clip count, for "auto"; `cache_dir`: compiled packages (default compile_cache_dir())."""
        super().__init__(config, device)
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        model, self.weights_description = build_s3d_backbone(config.weights)
        self.model = model.to(self.device).eval()
        self._compiled = None
        self.execution = self._resolve(execution, expected_clips, cache_dir)
        if self.execution != "eager" or config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)

    def _resolve(self, execution: str, expected_clips: int | None, cache_dir) -> str:
        """The mode actually used; loads (or builds) the compiled package when it is chosen."""
        if execution in ("eager", "channels_last"):
            return execution
        if self.device.type != "cpu":
            if execution == "compile":
                logger.warning("s3d: execution='compile' is CPU-only; using channels_last")
            return "channels_last"
        path = compiled_package_path(self.model, self.config, cache_dir)
        units = (expected_clips or 0) * self.config.clip_len / 64 * (self.config.crop / 224) ** 2
        if execution == "auto" and not path.is_file() and units < COMPILE_BREAK_EVEN_CLIPS:
            return "channels_last"
        try:
            self._compiled = load_compiled_package(self.model, self.config, path)
        except Exception as error:  # no C++ compiler, export failure...: auto falls back
            if execution == "compile":
                raise
            logger.warning("s3d: compiling failed (%s); using channels_last", error)
            return "channels_last"
        return "compile"

    @classmethod
    def inputs(cls, config: S3DConfig) -> ClipInputs:
        return ClipInputs(
            fps=config.fps,
            resize=tuple(config.resize),
            crop=config.crop,
            clip_len=config.clip_len,
            clip_stride=config.clip_stride,
            resize_method=config.resize_method,
        )

    def describe(self) -> dict:
        """The record; resize_method "decoder" is left out, as in the records written before
        the field existed (their features and setup keys stay valid)."""
        record = super().describe()
        if record["config"].get("resize_method") == "decoder":
            del record["config"]["resize_method"]
        return record

    @property
    def output_dim(self) -> int:
        return FEATURE_DIM

    def clip_plan(self, num_frames: int, native_fps: float) -> list[ClipPlan]:
        """Which native frames make each clip (rules in `plan_clips`)."""
        config = self.config
        return plan_clips(num_frames, native_fps, config.fps, config.clip_len, config.clip_stride)

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (L, H, W, 3) RGB -> uint8 (L, crop, crop, 3); see `preprocess_frames`."""
        return preprocess_frames(frames, self.config)

    def __call__(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 (N, clip_len, crop, crop, 3) -> float32 (N, 1024)."""
        clips = torch.as_tensor(clips)
        expected = (self.config.clip_len, self.config.crop, self.config.crop, 3)
        if clips.dtype != torch.uint8 or clips.ndim != 5 or tuple(clips.shape[1:]) != expected:
            raise ValueError(
                f"expected uint8 (N, *{expected}) clips, got {clips.dtype} {tuple(clips.shape)}"
            )
        if clips.shape[0] == 0:
            return np.zeros((0, FEATURE_DIM), dtype=np.float32)
        with torch.inference_mode(), self._autocast():
            # Move uint8 (4x less traffic than float), normalise on the device.
            inputs = normalize_clips(clips.to(self.device), self.config.mean, self.config.std)
            if self.execution == "eager" and not self.config.channels_last:
                inputs = inputs.contiguous()
            else:
                inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
            if self._compiled is not None:  # compiled for one clip at a time
                features = torch.cat([self._compiled(clip[None]) for clip in inputs])
            else:
                features = self.model(inputs)  # (N, 1024)
        return features.float().cpu().numpy()

    def example_input(self, batch_size: int = 2) -> np.ndarray:
        generator = np.random.default_rng(0)
        shape = (batch_size, self.config.clip_len, self.config.crop, self.config.crop, 3)
        return generator.integers(0, 256, size=shape, dtype=np.uint8)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
