"""The trained-model directory: the one place its format is written and read.

    write_checkpoint(directory, model.state_dict(), info, train_state)  # the trainer, per epoch
    export_model(checkpoint, "outputs/run/model")        # a checkpoint -> RUN_DIR/model
    model, info = load_model("outputs/run")              # RUN_DIR, RUN_DIR/model, a Tune OUT
    identifier = model_id(resolve_model_dir("outputs/run"))  # crif-<hash of the weights>
    setup = ExtractorSetup.from_metadata(info, "visual")      # the S3D set-up it was trained on
    setup.check_matches(ExtractorSetup.from_metadata(store_metadata, "visual"), "store X")

A model directory holds ``model.safetensors`` (the weights) and ``checkpoint.json`` (format,
epoch, model_config, task, class_names, dataset, semantic, modalities: the extractor set-ups
from dataset.json, train_config, history, resumes); a training checkpoint also holds
``train_state.pt`` (optimiser and scheduler state: plain tensors and numbers, so it loads with
``weights_only=True``). An exported model (RUN_DIR/model, Tune's OUT/best/model) has the first
two files only.

Why one module: scoring, robustness, reports and grids read models without importing the
training loop (and Ray Train with it); torch, safetensors and the model are imported when a
model is written or read, so the extraction job can use the set-up record without them.
Every function takes a local directory path or any
object with ``.as_directory()`` (a Ray Train ``Checkpoint``, by duck typing); a ``scheme://``
path is opened through Ray's ``Checkpoint`` (imported then, never at module level).

An :class:`ExtractorSetup` is the typed record of how features were made (extractor, weights,
config, dim). Its :meth:`~ExtractorSetup.setup_key` names extraction parts
(``_parts/<modality>-<key>``) and robustness caches; :meth:`~ExtractorSetup.check_matches`
refuses features made with another set-up than the model was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_INFO",
    "CHECKPOINT_TRAIN_STATE",
    "CHECKPOINT_WEIGHTS",
    "CheckpointContents",
    "ExtractorSetup",
    "export_model",
    "load_model",
    "model_id",
    "read_checkpoint",
    "read_checkpoint_info",
    "resolve_model_dir",
    "write_checkpoint",
]

CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_INFO = "checkpoint.json"
CHECKPOINT_TRAIN_STATE = "train_state.pt"
CHECKPOINT_FORMAT = "crif-checkpoint/1"
EXPORTED_FILES = (CHECKPOINT_WEIGHTS, CHECKPOINT_INFO)
SETUP_FIELDS = ("dim", "extractor", "weights", "config")  # the store contract's per modality


# ---------------------------------------------------------------------------- extractor set-up


@dataclass(frozen=True)
class ExtractorSetup:
    """How one modality's features were made: what ``Extractor.describe()`` returns and
    dataset.json / checkpoint.json record per modality. ``config`` is JSON-safe data."""

    extractor: str
    weights: str
    config: dict[str, Any]
    dim: int

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> ExtractorSetup:
        """From a ``{dim, extractor, weights, config}`` record; other keys are not part of it."""
        missing = [name for name in SETUP_FIELDS if name not in description]
        if missing:
            raise ValueError(f"an extractor description needs {missing}: {dict(description)}")
        return cls(
            extractor=description["extractor"],
            weights=description["weights"],
            config=json.loads(json.dumps(description["config"])),  # a copy, JSON-safe
            dim=description["dim"],
        )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], modality: str) -> ExtractorSetup | None:
        """The set-up of ``modality`` in a dataset.json or checkpoint.json; None if absent."""
        description = metadata.get("modalities", {}).get(modality)
        return None if description is None else cls.from_description(description)

    def to_description(self) -> dict[str, Any]:
        """The JSON record (as dataset.json stores it)."""
        return {
            "dim": self.dim,
            "extractor": self.extractor,
            "weights": self.weights,
            "config": json.loads(json.dumps(self.config)),
        }

    def setup_key(self) -> str:
        """12 hex characters of sha256 over the sorted-key JSON of the description.

        The key names on-disk caches (extraction parts, robustness features), so it must not
        change: it equals the hash the extraction job has always used."""
        text = json.dumps(self.to_description(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def check_matches(
        self, other: ExtractorSetup | None, where: str, *, modality: str = "visual"
    ) -> None:
        """Raise ValueError naming each differing field unless ``other`` (features at
        ``where``; None: none recorded) was made exactly like ``self`` (the model's)."""
        expected = self.to_description()
        actual = {} if other is None else other.to_description()
        differences = [
            name
            for name in SETUP_FIELDS
            if json.dumps(expected.get(name), sort_keys=True)
            != json.dumps(actual.get(name), sort_keys=True)
        ]
        if differences:
            detail = "; ".join(
                f"{name}: model {expected.get(name)!r} vs {actual.get(name)!r}"
                for name in differences
            )
            raise ValueError(f"{where}: {modality} features do not match the model's ({detail})")


# ---------------------------------------------------------------------------- directories


@contextlib.contextmanager
def _local_directory(source: Any) -> Iterator[Path]:
    """A local directory with the files of ``source`` (a path or a Ray ``Checkpoint``)."""
    if not hasattr(source, "as_directory") and "://" in str(source):
        from ray.train import Checkpoint  # remote storage: Ray's filesystem resolution

        source = Checkpoint.from_directory(str(source))
    if hasattr(source, "as_directory"):
        with source.as_directory() as directory:
            yield Path(directory)
    else:
        yield Path(source)


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding checkpoint.json and the weights: ``path`` itself, ``path/model``
    (a RUN_DIR) or ``path/best/model`` (a Tune sweep's OUT)."""
    path = Path(path)
    for candidate in (path, path / "model", path / "best" / "model"):
        if (candidate / CHECKPOINT_INFO).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no trained model (expected {CHECKPOINT_INFO} in it or model/)"
    )


def model_id(model_dir: str | Path) -> str:
    """``crif-<hash of the weights>``: names a model's prediction parts."""
    digest = hashlib.sha256((Path(model_dir) / CHECKPOINT_WEIGHTS).read_bytes()).hexdigest()
    return f"crif-{digest[:12]}"


# ---------------------------------------------------------------------------- write / read


def write_checkpoint(
    directory: str | Path,
    weights: Mapping[str, torch.Tensor],
    info: Mapping[str, Any],
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory (a training checkpoint when ``train_state`` is given)."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}
    save_file(tensors, directory / CHECKPOINT_WEIGHTS)
    (directory / CHECKPOINT_INFO).write_text(json.dumps(dict(info), indent=2))
    if train_state is not None:
        torch.save(dict(train_state), directory / CHECKPOINT_TRAIN_STATE)
    return directory


def read_checkpoint_info(source: Any) -> dict[str, Any]:
    """checkpoint.json of a model directory or checkpoint."""
    with _local_directory(source) as directory:
        return json.loads((directory / CHECKPOINT_INFO).read_text())


@dataclass(frozen=True)
class CheckpointContents:
    """What a checkpoint holds; ``train_state`` is None unless it was asked for."""

    info: dict[str, Any]
    weights: dict[str, torch.Tensor]
    train_state: dict[str, Any] | None


def read_checkpoint(
    source: Any, device: str | torch.device = "cpu", *, train_state: bool = False
) -> CheckpointContents:
    """Info, weights and (``train_state=True``: a training checkpoint's) optimiser state,
    tensors on ``device``; one read of the source (a remote checkpoint is fetched once)."""
    import torch
    from safetensors.torch import load_file

    with _local_directory(source) as directory:
        info = json.loads((directory / CHECKPOINT_INFO).read_text())
        weights = load_file(directory / CHECKPOINT_WEIGHTS, device=str(device))
        state = None
        if train_state:
            path = directory / CHECKPOINT_TRAIN_STATE
            state = torch.load(path, map_location=device, weights_only=True)
    return CheckpointContents(info=info, weights=weights, train_state=state)


def export_model(source: Any, directory: str | Path) -> Path:
    """Copy a checkpoint's weights and info to ``directory`` (replaced whole, atomically)."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    with _local_directory(source) as local:
        for name in EXPORTED_FILES:
            shutil.copy2(local / name, staging / name)
    previous = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex}")
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory


def load_model(source: Any, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode, info) from a checkpoint or a model directory.

    A local path may also be a RUN_DIR or a Tune OUT (:func:`resolve_model_dir`). ``info``
    holds model_config, task, class_names, modalities (dims and extractor set-ups from
    dataset.json), train_config, epoch and history.
    """
    from pipeline.crif.model import CRIFConfig, build_model

    if not hasattr(source, "as_directory") and "://" not in str(source):
        source = resolve_model_dir(source)
    contents = read_checkpoint(source, device=device)
    model = build_model(CRIFConfig.from_dict(contents.info["model_config"]))
    model.load_state_dict(contents.weights)
    return model.to(device).eval(), contents.info
