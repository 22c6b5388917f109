"""The extractor base class, the registry, and the helpers every extractor shares.

An extractor turns one modality of a video into float32 feature rows:

    extractor = build_extractor("s3d", {"weights": "random", "clip_len": 16})
    features = extractor(clips)            # (N, extractor.output_dim) float32
    record = extractor.describe()          # goes into dataset.json and model checkpoints

`describe()` records the weights and the exact preprocessing (the frozen config), so a
scoring job can rebuild the same extractor with `config_from_dict` and refuse a mismatch.
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
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "Extractor",
    "available_extractors",
    "build_extractor",
    "config_from_dict",
    "config_to_dict",
    "describe_file",
    "get_extractor",
    "load_state_dict_file",
    "load_state_dict_strict",
    "register_extractor",
    "seeded_random_init",
    "warn_random_weights",
]

logger = logging.getLogger(__name__)

MODALITIES = ("visual", "text", "audio")

_REGISTRY: dict[str, type[Extractor]] = {}


class Extractor(abc.ABC):
    """One modality's feature extractor: weights loaded once in __init__, eval mode.

    Subclasses set `name`, `modality`, `config_class`, fill `self.weights_description`
    in __init__ (what was actually loaded), and implement `output_dim`, `__call__`
    and `example_input`.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, device: str | torch.device = "cpu") -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.device = torch.device(device)
        self.weights_description = "unset"

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
    if cls.modality not in MODALITIES:
        raise ValueError(f"{cls.__name__}.modality must be one of {MODALITIES}")
    if not (dataclasses.is_dataclass(cls.config_class) and _is_frozen(cls.config_class)):
        raise TypeError(f"{cls.__name__}.config_class must be a frozen dataclass")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"extractor name {cls.name!r} already registered by {existing!r}")
    _REGISTRY[cls.name] = cls
    return cls


def available_extractors() -> list[str]:
    """Registered extractor names, sorted."""
    return sorted(_REGISTRY)


def get_extractor(name: str) -> type[Extractor]:
    """The extractor class registered under `name`."""
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


def config_from_dict(name: str, values: dict) -> Any:
    """Rebuild the frozen config of extractor `name` from its JSON form (lists -> tuples).

    Unknown keys are an error (a record from another version should not be half-read);
    missing keys take the defaults.
    """
    config_class = get_extractor(name).config_class
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
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning("%s", message)
