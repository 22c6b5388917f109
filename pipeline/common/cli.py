"""One CLI layer for every job: a config dataclass becomes an argparse parser, and one skeleton
runs the job (parse, ``init_ray``, call one pipeline function, say where the output went).

    parser = config_parser(TrainConfig, __doc__)          # --alpha-sim for alpha_sim, ...
    def main(argv=None) -> int:
        return run_job(train, parser, TrainConfig, argv)  # train(config, args) -> "model: ..."

Field -> flag: ``alpha_sim`` is ``--alpha-sim``; a ``Literal`` gives ``choices``; a bool gives
``--flag/--no-flag``; a tuple takes several values (``metadata={"comma": True}``: one comma
list; ``{"append": True}``: the flag repeated); a dict field is set from ``--config`` only.
Every flag's help is the field's comment (``pipeline.common.configs.field_help``) with its
default. The shared flags (``--config``, ``--address``, ``--num-cpus``) are declared here once.
``--config FILE`` (YAML, flat or grouped names) sets the defaults; flags given on the command
line override the file. ValueError (StoreError is one), FileNotFoundError: ``error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable
from typing import Any

from pipeline.common.configs import (
    build_config,
    choices_of,
    field_help,
    flat_fields,
    flatten_document,
    read_config_file,
    type_members,
)

__all__ = ["SHARED_FLAGS", "config_parser", "parse_config", "run_job"]

# Declared once for every job: dest -> (flag, argparse keywords).
SHARED_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "config": (
        "--config",
        {"metavar": "FILE", "help": "YAML recipe of field values (configs/); flags override it"},
    ),
    "address": (
        "--address",
        {"help": "Ray cluster to join (default: RAY_ADDRESS, else a new local Ray)"},
    ),
    "num_cpus": ("--num-cpus", {"type": int, "help": "CPUs of a new local Ray instance"}),
}
_CONFIG_DESTS = "_config_dests"  # parser attribute: the dests that are config fields


def _base_type(annotation: Any) -> Any:
    """``X`` of ``X | None``; the item type of ``tuple[X, ...]``."""
    members = type_members(annotation)
    if members:
        return _base_type(members[0])
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _help(text: str, default: Any, required: bool) -> str:
    text = text.replace("%", "%%")
    if required:
        return f"{text} (required)"
    return text if default is None else f"{text} (default: %(default)s)"


def _file_default_help(text: str) -> str:
    """The help of a flag whose default now comes from a --config file."""
    text = text.removesuffix(" (required)")
    return text if "%(default)s" in text else f"{text} (default: %(default)s)"


def _add_field(parser, field: dataclasses.Field, annotation: Any, text: str) -> None:
    metadata = field.metadata
    flag = metadata.get("flag", "--" + field.name.replace("_", "-"))
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    required = required or bool(metadata.get("required"))
    default = None
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    options: dict[str, Any] = {"dest": field.name, "required": required}
    if "flag" in metadata:
        options["metavar"] = flag.lstrip("-").upper().replace("-", "_")
    choices = metadata.get("choices") or choices_of(annotation)
    is_tuple = typing.get_origin(annotation) is tuple
    if _base_type(annotation) is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif is_tuple and metadata.get("comma"):
        options["type"] = _comma_list
        default = ",".join(default) if default is not None else None
    else:
        options["type"] = _base_type(annotation)
        options["choices"] = choices
        if metadata.get("append"):  # --model A --model B
            options["action"], default = "append", None
        elif is_tuple:  # --seeds 0 1 2
            options["nargs"] = "+"
            default = None if default is None else list(default)
    if not required:
        options["default"] = default
    action = parser.add_argument(flag, **options)
    action.help = _help(text, default, required)  # BooleanOptionalAction adds its own default


def config_parser(
    config_class: type, doc: str | None, *, skip: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """A parser with one flag per (flat) field of ``config_class`` plus the shared flags.

    ``doc`` (the job's module docstring): its first paragraph is the description, the rest the
    epilog. Fields in ``skip``, dict and dataclass fields (set by ``--config`` files) and the
    shared flags' names get no field flag."""
    head, _, rest = (doc or "").strip().partition("\n\n")
    parser = argparse.ArgumentParser(
        description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    helps = field_help(config_class)
    dests = []
    for field, annotation, _ in flat_fields(config_class):
        if field.name in skip or field.name in SHARED_FLAGS:
            continue
        if typing.get_origin(annotation) is dict or dataclasses.is_dataclass(annotation):
            continue  # mappings and nested settings come from --config files only
        text = helps.get(field.name) or ""
        if not text:
            raise ValueError(f"{config_class.__name__}.{field.name} has no help comment")
        _add_field(parser, field, annotation, text)
        dests.append(field.name)
    group = parser.add_argument_group("shared")
    for dest, (flag, options) in SHARED_FLAGS.items():
        group.add_argument(flag, dest=dest, **options)
    setattr(parser, _CONFIG_DESTS, tuple(dests))
    return parser


def _peek_config(argv: list[str]) -> str | None:
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--config")
    return peek.parse_known_args(argv)[0].config


def parse_config(
    parser: argparse.ArgumentParser,
    config_class: type,
    argv: list[str] | None = None,
    *,
    default_config: str | None = None,
    build: Callable[[dict[str, Any], argparse.Namespace], Any] | None = None,
) -> tuple[Any, argparse.Namespace]:
    """(config, namespace): the ``--config`` file's values (or ``default_config``'s), then the
    flags given. ``build(values, args)`` makes the config from the flat values (default:
    ``config_class`` from them, grouped fields included)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _peek_config(argv) or default_config
    dests = getattr(parser, _CONFIG_DESTS)
    from_file: dict[str, Any] = {}
    if path is not None:
        from_file = flatten_document(config_class, read_config_file(path))
        flags = {k: v for k, v in from_file.items() if k in dests}
        for action in parser._actions:
            if action.dest in flags:
                action.required = False
                action.help = _file_default_help(action.help)
                value = flags[action.dest]
                if action.type is _comma_list and isinstance(value, (list, tuple)):
                    flags[action.dest] = ",".join(value)
        parser.set_defaults(**flags)
    args = parser.parse_args(argv)
    leaves = {field.name: field for field, _, _ in flat_fields(config_class)}
    given = {dest: getattr(args, dest) for dest in dests}
    # A flag left unset (None) keeps the field's own default (an empty tuple, say).
    given = {k: v for k, v in given.items() if v is not None or leaves[k].default is None}
    values = {**from_file, **given}
    if "address" in leaves:
        values["address"] = args.address
    if build is not None:
        return build(values, args), args
    return build_config(config_class, values), args


def run_job(
    job: Callable[[Any, argparse.Namespace], str | None],
    parser: argparse.ArgumentParser,
    config_class: type,
    argv: list[str] | None = None,
    *,
    start_ray: bool = True,
    **parse_options: Any,
) -> int:
    """Parse, start or join Ray, run ``job(config, args)`` and print what it returns (where the
    output went). Bad input (ValueError, StoreError, FileNotFoundError): ``error: ...``, exit 2.
    ``start_ray=False``: the job starts Ray itself (``init_ray(args.address, ...)``)."""
    try:
        config, args = parse_config(parser, config_class, argv, **parse_options)
        if start_ray:  # imported here: a job without Ray (the edge runner) never loads it
            from pipeline.common.ray_utils import init_ray

            init_ray(args.address, num_cpus=args.num_cpus)
        where = job(config, args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if where:
        print(where)
    return 0
