"""Config dataclasses as data: choices from ``Literal`` types, help from field comments, grouped
fields built from flat names, and named recipes read from YAML files in ``configs/``.

    Backbone = Literal["gru", "vilt"]

    @dataclass(frozen=True)
    class CRIFConfig:
        backbone: Backbone = "gru"  # sequence backbone of both modalities
        def __post_init__(self):
            check_choices(self)  # the allowed values are get_args(Backbone), nowhere else

    field_help(CRIFConfig)["backbone"]          # "sequence backbone of both modalities"
    config = build_config(TrainConfig, {"features": "f", "out": "o", "lr": 1e-2})  # flat names
    plan = load_config(BenchmarkPlan, "crosscam-quick")  # configs/crosscam-quick.yaml

Why: one place per choice set (the Literal), one place per help line (the field's comment, or
``field(metadata={"help": ...})``), and recipes as files that jobs take with ``--config``.
A field marked ``field(metadata={"group": True})`` holds a nested dataclass whose fields are
addressed by their own (flat) names: ``lr`` for ``TrainConfig.optimization.lr``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "CONFIGS_DIR",
    "build_config",
    "check_choices",
    "choices_of",
    "field_help",
    "flat_fields",
    "flat_names",
    "flatten_document",
    "load_config",
    "read_config_file",
    "to_flat",
    "type_members",
]

# Named recipes (demo, benchmarks, paper settings): the checkout's folder (editable installs,
# ray job submit --working-dir), else the copy a wheel install puts under sys.prefix
# (pyproject.toml's data-files).
_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_INSTALLED_CONFIGS = Path(sys.prefix) / "share" / "crif-ray" / "configs"
CONFIGS_DIR = _CHECKOUT_CONFIGS if _CHECKOUT_CONFIGS.is_dir() else _INSTALLED_CONFIGS


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_members(annotation: Any) -> tuple[Any, ...]:
    """The parts of ``X | None`` or ``tuple[X, ...]`` (without None and the Ellipsis)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple):
        return tuple(a for a in typing.get_args(annotation) if a not in (type(None), Ellipsis))
    return ()


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal`` annotation, also inside ``X | None`` and ``tuple[X, ...]``."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for member in type_members(annotation):
        found = choices_of(member)
        if found is not None:
            return found
    return None


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def check_choices(instance: Any) -> None:
    """Raise ValueError when a ``Literal``-typed field (or tuple of them) holds another value."""
    hints = _hints(type(instance))
    for field in dataclasses.fields(instance):
        allowed = choices_of(hints[field.name])
        value = getattr(instance, field.name)
        if allowed is None or (value is None and _allows_none(hints[field.name])):
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if item not in allowed:
                raise ValueError(f"{field.name} must be one of {allowed}, got {item!r}")


def _is_group(field: dataclasses.Field) -> bool:
    return bool(field.metadata.get("group"))


def flat_fields(cls: type) -> list[tuple[dataclasses.Field, Any, type]]:
    """(field, annotation, owning class) of every leaf field, groups expanded in order."""
    found = []
    for field in dataclasses.fields(cls):
        annotation = _hints(cls)[field.name]
        if _is_group(field):
            found.extend(flat_fields(annotation))
        else:
            found.append((field, annotation, cls))
    return found


def flat_names(cls: type) -> tuple[str, ...]:
    """The flat field names of ``cls`` (what flags, Tune spaces and recipe files use)."""
    return tuple(field.name for field, _, _ in flat_fields(cls))


def _coerce(annotation: Any, value: Any) -> Any:
    """A YAML or argparse value as the field's type: lists to tuples, mappings to dataclasses,
    numbers from strings (YAML 1.1 reads ``1e-3`` as a string)."""
    if value is None:
        return None
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return build_config(annotation, value)
    members = type_members(annotation)
    if typing.get_origin(annotation) is tuple and isinstance(value, (list, tuple)):
        item = members[0] if members else Any
        return tuple(_coerce(item, v) for v in value)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(members) == 1:
        return _coerce(members[0], value)
    if annotation is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, str):
        return int(value)
    return value


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from flat names (groups filled from their fields' names); unknown names refused."""
    values = dict(values)
    instance = _build(cls, values)
    if values:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(values)}")
    return instance


def _build(cls: type, values: dict[str, Any]) -> Any:
    """Pops the fields of ``cls`` out of ``values``."""
    hints, arguments = _hints(cls), {}
    for field in dataclasses.fields(cls):
        if _is_group(field):
            group = values.pop(field.name, None)
            if isinstance(group, dict):  # a nested mapping given for the group
                values.update(group)
            arguments[field.name] = (
                group if _is_instance(group) else _build(hints[field.name], values)
            )
        elif field.name in values:
            arguments[field.name] = _coerce(hints[field.name], values.pop(field.name))
    return cls(**arguments)


def _is_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def to_flat(instance: Any) -> dict[str, Any]:
    """The leaf values of ``instance`` by flat name (``asdict`` of groups merged in)."""
    flat = {}
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if _is_group(field):
            flat.update(to_flat(value))
        else:
            flat[field.name] = dataclasses.asdict(value) if _is_instance(value) else value
    return flat


def flatten_document(cls: type, document: dict[str, Any]) -> dict[str, Any]:
    """A recipe mapping in flat or grouped form (``optimization: {lr: ...}``) as flat names."""
    groups = {f.name: _hints(cls)[f.name] for f in dataclasses.fields(cls) if _is_group(f)}
    flat: dict[str, Any] = {}
    for key, value in document.items():
        parts = flatten_document(groups[key], value) if key in groups else {key: value}
        repeated = set(parts) & set(flat)
        if repeated:
            raise ValueError(f"{sorted(repeated)} given twice (flat and in a group)")
        flat.update(parts)
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML recipe: a path, or the name of a file in ``configs/``."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = CONFIGS_DIR / f"{path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of field names, got {type(document)}")
    return document


def load_config(cls: type, path: str | Path, **overrides: Any) -> Any:
    """``cls`` from a recipe file (flat or grouped names), ``overrides`` (flat names) on top."""
    flat = flatten_document(cls, read_config_file(path))
    return build_config(cls, {**flat, **overrides})


_FIELD_LINE = re.compile(r"^(?P<indent>\s+)(?P<name>\w+)\s*:(?P<rest>.*)$")


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Help line of every field: ``metadata["help"]``, else the field line's trailing comment,
    else the comment lines right above it (groups' fields included)."""
    names = {field.name for field in dataclasses.fields(cls)}
    found: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        match = _FIELD_LINE.match(line)
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        if match and match["name"] in names and match["name"] not in found:
            _, hash_mark, trailing = match["rest"].rpartition("  # ")
            text = trailing.strip() if hash_mark else " ".join(above)
            found[match["name"]] = text
        above = []
    for field in dataclasses.fields(cls):
        if "help" in field.metadata:
            found[field.name] = field.metadata["help"]
        if _is_group(field):
            found.update(field_help(_hints(cls)[field.name]))
    return found
