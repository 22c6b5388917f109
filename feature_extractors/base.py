"""The extractor base class, the registry, and the helpers every extractor shares.

An extractor turns one modality of a video into float32 feature rows:

    extractor = build_extractor("s3d", {"weights": "random", "clip_len": 16})
    features = extractor(clips)            # (N, extractor.output_dim) float32
    record = extractor.describe()          # goes into dataset.json and model checkpoints
    needs = get_extractor("s3d").requirements(extractor.config)
    needs.inputs                           # ClipInputs(fps=15.0, resize=(256, 256), ...)

`describe()` records the weights and the exact preprocessing (the frozen config), so a
scoring job can rebuild the same extractor with `config_from_dict` and refuse a mismatch.
`requirements(config)` is plain data for the extraction job, computed without loading a
model: what decoding must deliver (`ClipInputs`, `WaveformInputs` or `CaptionInputs`), the
store modality filled, the feature width when known, the default batch size and the actor
resources. The job builds its Ray stages from it alone, so registering an extractor (even
one defined outside this package) is all it takes to extract it.
This package is torch-only on purpose: Ray glue lives in `pipeline/`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import pickle
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "INPUT_KINDS",
    "ActorResources",
    "CaptionInputs",
    "ClipInputs",
    "Extractor",
    "Requirements",
    "WaveformInputs",
    "available_extractors",
    "build_extractor",
    "config_from_dict",
    "config_to_dict",
    "describe_file",
    "get_extractor",
    "load_state_dict_file",
    "load_state_dict_strict",
    "load_weights",
    "register_extractor",
    "seeded_random_init",
    "warn_random_weights",
]

logger = logging.getLogger(__name__)

MODALITIES = ("visual", "text", "audio")
INPUT_KINDS = ("clips", "waveform", "captions")

_REGISTRY: dict[str, type[Extractor]] = {}


# What an extractor needs from the pipeline (plain data) ---------------------------------------


@dataclass(frozen=True)
class ClipInputs:
    """Clips of RGB frames: the video resampled to `fps`, resized to `resize` (H, W),
    centre-cropped to `crop`, cut into `clip_len` frames every `clip_stride` (resampled
    frames; tail rule: s3d.plan_clips). The extractor gets uint8 (N, clip_len, crop, crop, 3)
    and returns one feature per clip. resize_method: "decoder" (scaled inside the decoder,
    FFmpeg bilinear) or "exact" (native frames resized with torchvision's bilinear, as the
    reference transforms of the weights)."""

    kind: str = field(default="clips", init=False)
    fps: float
    resize: tuple[int, int]
    crop: int
    clip_len: int
    clip_stride: int
    resize_method: str = "decoder"


@dataclass(frozen=True)
class WaveformInputs:
    """The audio track: decoded mono at its native rate, then turned into model items by the
    extractor's `prepare_audio` on the decode task (resampling to `sample_rate` included);
    one item, and one feature, per `window_seconds` of audio every `hop_seconds`."""

    kind: str = field(default="waveform", init=False)
    sample_rate: int
    window_seconds: float
    hop_seconds: float


@dataclass(frozen=True)
class CaptionInputs:
    """The video's captions (text, no decoding); one feature per caption."""

    kind: str = field(default="captions", init=False)


@dataclass(frozen=True)
class ActorResources:
    """How one model actor runs. num_gpus: per actor when the cluster has GPUs (0: CPU
    always). concurrent_calls: calls one actor runs at once (2 lets the decode fused into
    the actor overlap the model). all_cores: on CPU, torch uses every core the actor may use
    (or the job's thread count) instead of Ray's per-actor num_cpus."""

    num_gpus: float = 1.0
    concurrent_calls: int = 1
    all_cores: bool = False


@dataclass(frozen=True)
class Requirements:
    """Everything the extraction job needs to know about one extractor set-up.

    modality: the store column it fills. output_dim: the feature width, None when only the
    loaded model knows it (text). batch_size: default rows per model call.
    """

    modality: str
    inputs: ClipInputs | WaveformInputs | CaptionInputs
    output_dim: int | None
    batch_size: int
    resources: ActorResources


class Extractor(abc.ABC):
    """One modality's feature extractor: weights loaded once in __init__, eval mode.

    Subclasses set `name`, `modality`, `config_class` and `batch_size` (and `feature_dim`,
    `resources` when the defaults do not fit), fill `self.weights_description` in __init__
    (what was actually loaded), and implement `inputs`, `output_dim`, `__call__` and
    `example_input`; waveform extractors also `prepare_audio`.
    """

    name: ClassVar[str]
    modality: ClassVar[str]  # store column: visual | text | audio, or an extra modality
    config_class: ClassVar[type]
    batch_size: ClassVar[int]  # default rows (clips, or videos) per model call
    feature_dim: ClassVar[int | None] = None  # None: known once the model is loaded
    resources: ClassVar[ActorResources] = ActorResources()

    def __init__(self, config: Any, device: str | torch.device = "cpu") -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.device = torch.device(device)
        self.weights_description = "unset"

    @classmethod
    @abc.abstractmethod
    def inputs(cls, config: Any) -> ClipInputs | WaveformInputs | CaptionInputs:
        """What decoding must deliver for `config`: a pure function of the config, no model."""

    @classmethod
    def requirements(cls, config: Any) -> Requirements:
        """The extraction job's view of this extractor with `config` (no model is loaded)."""
        return Requirements(
            modality=cls.modality,
            inputs=cls.inputs(config),
            output_dim=cls.feature_dim,
            batch_size=cls.batch_size,
            resources=cls.resources,
        )

    @classmethod
    def prepare_audio(cls, config: Any, waveform: Any, sample_rate: int) -> Any:
        """Waveform kind: one video's mono waveform at its native rate -> model items (N, ...),
        on a CPU decode task (no model)."""
        raise NotImplementedError(f"{cls.__name__} does not take a waveform")

    @property
    @abc.abstractmethod
    def output_dim(self) -> int:
        """Width D of every feature row this extractor returns."""

    @abc.abstractmethod
    def __call__(self, inputs: Any) -> Any:
        """Model-ready inputs -> float32 np.ndarray (N, output_dim)."""

    @abc.abstractmethod
    def example_input(self, batch_size: int = 2) -> Any:
        """A small valid input for `__call__`: the input contract, executable (smoke tests)."""

    def describe(self) -> dict:
        """JSON-safe record of what produced the features (dataset.json, checkpoints)."""
        return {
            "dim": int(self.output_dim),
            "extractor": self.name,
            "weights": self.weights_description,
            "config": config_to_dict(self.config),
        }


# Registry --------------------------------------------------------------------------------


def register_extractor(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator: make `cls` buildable by name (and enrol it in the test suite)."""
    if not (isinstance(cls, type) and issubclass(cls, Extractor)):
        raise TypeError(f"{cls!r} is not an Extractor subclass")
    modality = cls.modality
    if not (isinstance(modality, str) and modality.isidentifier() and modality.islower()):
        # Which extra names a store takes (not another column's): pipeline/store.py.
        raise ValueError(
            f"{cls.__name__}.modality must be one of {MODALITIES} or another lowercase "
            f"identifier, got {modality!r}"
        )
    if not (isinstance(cls.batch_size, int) and cls.batch_size >= 1):
        raise TypeError(f"{cls.__name__}.batch_size must be an int >= 1")
    if not isinstance(cls.resources, ActorResources):
        raise TypeError(f"{cls.__name__}.resources must be an ActorResources")
    if not (dataclasses.is_dataclass(cls.config_class) and _is_frozen(cls.config_class)):
        raise TypeError(f"{cls.__name__}.config_class must be a frozen dataclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"extractor name {cls.name!r} already registered by {existing!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _register_builtins() -> None:
    """The built-in extractors register when their modules import; import them all."""
    import feature_extractors._registry  # noqa: F401


def available_extractors() -> list[str]:
    """Registered extractor names, sorted."""
    _register_builtins()
    return sorted(_REGISTRY)


def get_extractor(name: str) -> type[Extractor]:
    """The extractor class registered under `name`."""
    _register_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown extractor {name!r}; available: {', '.join(available_extractors())}"
        ) from None


def build_extractor(name: str, config: Any = None, device: str | torch.device = "cpu"):
    """Build a registered extractor from a config object, a dict (e.g. describe()["config"])
    or None (the defaults)."""
    extractor_class = get_extractor(name)
    if config is None:
        config = extractor_class.config_class()
    elif isinstance(config, dict):
        config = config_from_dict(name, config)
    return extractor_class(config, device=device)


def config_from_dict(name: str | type[Extractor], values: dict) -> Any:
    """Rebuild the frozen config of extractor `name` (or of an Extractor class: Ray workers
    get the class itself) from its JSON form (lists -> tuples).

    Unknown keys are an error (a record from another version should not be half-read);
    missing keys take the defaults.
    """
    extractor_class = name if isinstance(name, type) else get_extractor(name)
    config_class = extractor_class.config_class
    field_types = typing.get_type_hints(config_class)
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {config_class.__name__} fields {unknown}; known: {sorted(known)}"
        )
    restored = {}
    for key, value in values.items():
        if typing.get_origin(field_types[key]) is tuple and isinstance(value, list):
            value = tuple(value)
        restored[key] = value
    return config_class(**restored)


def config_to_dict(config: Any) -> dict:
    """dataclasses.asdict made JSON-safe: tuples become lists."""
    return _json_safe(dataclasses.asdict(config))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _is_frozen(config_class: type) -> bool:
    return config_class.__dataclass_params__.frozen  # type: ignore[attr-defined]


# Weights -----------------------------------------------------------------------------------


def describe_file(path: str | Path) -> str:
    """'name sha256:<first 12 hex>' so a record names the exact weights file that was used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(path).name} sha256:{digest.hexdigest()[:12]}"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a .pth state dict (tensors only, weights_only) with errors that name the file.

    Accepts a plain state dict or one wrapped as {"state_dict": ...}. Never falls back to a
    random init: a missing or unreadable file is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"cannot read weights file {path} (corrupt or not a torch file): {error}"
        ) from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return loaded


def load_state_dict_strict(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """load_state_dict(strict=True) whose errors name the source and the offending keys.

    Keys starting with one of `ignore_prefixes` (e.g. a classifier head) are dropped first.
    """
    kept = {
        key: value
        for key, value in state_dict.items()
        if not any(key.startswith(prefix) for prefix in ignore_prefixes)
    }
    expected = set(module.state_dict())
    missing = sorted(expected - set(kept))
    unexpected = sorted(set(kept) - expected)
    if missing or unexpected:
        raise ValueError(
            f"weights from {source} do not fit {type(module).__name__}: "
            f"{len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    try:
        module.load_state_dict(kept, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(
            f"weights from {source} do not fit {type(module).__name__}: {error}"
        ) from error


def seeded_random_init(build: typing.Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a module under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def warn_random_weights(extractor_name: str) -> None:
    """Loud banner: random weights are for tests and plumbing, never for experiments."""
    message = (
        f"{extractor_name}: weights='random' (seeded init). The features carry NO pretrained "
        "semantics; use them for tests and plumbing only, never for reported results."
    )
    warnings.warn(message, UserWarning, stacklevel=4)  # the extractor building its network
    logger.warning("%s", message)


def load_weights(
    extractor_name: str,
    weights: str,
    build: typing.Callable[[], nn.Module],
    *,
    initialise: typing.Callable[[nn.Module], nn.Module],
    ignore_prefixes: tuple[str, ...] = (),
    named: dict[str, typing.Callable[[], dict[str, torch.Tensor]]] | None = None,
) -> tuple[nn.Module, str]:
    """A network and the description of its weights, the one way every extractor loads them.

    weights: "random" (`initialise(build())` under a fixed seed, with the loud warning), a
    name in `named` (its loader gives the state dict; described by the name) or the path of
    a state-dict file (described by file name and hash). Loading is strict: keys starting
    with `ignore_prefixes` (a classifier head, a bundled PCA) are dropped, every other key
    must fit.
    """
    if weights == "random":
        warn_random_weights(extractor_name)
        return seeded_random_init(lambda: initialise(build())), "random"
    if named and weights in named:
        state_dict, description = named[weights](), weights
    else:
        state_dict, description = load_state_dict_file(weights), describe_file(weights)
    module = build()
    load_state_dict_strict(module, state_dict, source=str(weights), ignore_prefixes=ignore_prefixes)
    return module, description
