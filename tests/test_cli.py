"""The CLI layer: every job explains every flag, recipes in configs/ load into their config
dataclasses, --config with flags on top, choices from Literal types, entry points import."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import tomllib

from jobs.demo import DemoConfig
from pipeline.common.configs import (
    CONFIGS_DIR,
    check_choices,
    choices_of,
    field_help,
    load_config,
    read_config_file,
)
from pipeline.synthetic.crosscam import BenchmarkPlan, full_plan, quick_plan
from pipeline.train.trainer import STRATEGIES, Strategy, TrainConfig

REPO = Path(__file__).resolve().parents[1]
VERBS = ("extract", "train", "tune", "experiments", "score", "crosscam", "robustness", "demo")
VERBS += ("export", "edge_score", "serve")
# Which dataclass each recipe file loads into, by file-name prefix; a new file needs a row.
RECIPES = {"demo": DemoConfig, "crosscam-": BenchmarkPlan, "train-": TrainConfig}
PATHS = {TrainConfig: {"features": "f", "out": "o"}}  # fields a recipe leaves to the flags


def _job(verb: str):
    return importlib.import_module(f"jobs.{verb}")


@pytest.mark.parametrize("verb", VERBS)
def test_help_exits_zero_and_every_option_explains_itself(verb):
    job = _job(verb)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        job.main(["--help"])
    assert exit_info.value.code == 0
    assert "--config" in output.getvalue() and "--address" in output.getvalue()
    for action in job.build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"jobs/{verb}.py {action.option_strings} has no help"
        if action.default not in (None, argparse.SUPPRESS):
            assert "%(default)s" in action.help, f"{action.option_strings}: no default shown"


def test_job_files_run_without_path_hacks():
    for verb in VERBS:
        assert "sys.path.insert" not in (REPO / "jobs" / f"{verb}.py").read_text()
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "jobs/train.py", "--help"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--alpha-sim" in result.stdout and "(default: 1.0)" in result.stdout


def test_console_entry_points_name_the_jobs_main_functions():
    document = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = document["project"]["scripts"]
    assert set(scripts) == {f"crif-{verb.replace('_', '-')}" for verb in VERBS}
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert (
            getattr(importlib.import_module(module), function)
            is _job(name[5:].replace("-", "_")).main
        )
    assert "jobs*" in document["tool"]["setuptools"]["packages"]["find"]["include"]


def _recipe_class(path: Path) -> type:
    matches = [cls for prefix, cls in RECIPES.items() if path.stem.startswith(prefix)]
    assert len(matches) == 1, f"{path.name}: no config dataclass in RECIPES"
    return matches[0]


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_into_its_config_dataclass(path):
    cls = _recipe_class(path)
    config = load_config(cls, path, **PATHS.get(cls, {}))
    assert isinstance(config, cls)
    if cls is TrainConfig:  # the paper's settings (DESIGN.md)
        assert config.optimization.weight_decay == 1e-3 and config.optimization.lr_step == 4
    if cls is BenchmarkPlan:  # every cell's TrainConfig is valid
        TrainConfig.from_flat(features="f", out="o", **config.train)
    if cls is DemoConfig:
        TrainConfig.from_flat(features="f", out="o", **config.train)


def test_recipe_constants_come_from_the_files():
    from pipeline.tune.grids import quick_train

    QUICK_TRAIN = quick_train()

    quick = read_config_file("crosscam-quick")
    assert quick_plan().train == quick["train"] and quick_plan().seeds == tuple(quick["seeds"])
    assert (
        full_plan().data.videos_per_camera
        == read_config_file("crosscam-full")["data"]["videos_per_camera"]
    )
    assert {k: QUICK_TRAIN[k] for k in full_plan().train} == full_plan().train
    assert (QUICK_TRAIN["num_workers"], QUICK_TRAIN["cpus_per_worker"]) == (0, 0.25)


def test_flags_on_the_command_line_override_the_config_file():
    from jobs import train

    recipe = str(CONFIGS_DIR / "train-activitynet-paper.yaml")
    config = train.parse_config(["--config", recipe, "--features", "f", "--out", "o"])
    assert config.semantic == "audio" and config.optimization.strategy == "multistage"
    assert config.optimization.epochs_per_stage == 13
    again = train.parse_config(
        ["--features", "f", "--config", recipe, "--out", "o", "--epochs", "6", "--lr", "0.5"]
    )
    assert (again.optimization.epochs, again.optimization.lr) == (6, 0.5)
    assert again.model == config.model  # the rest still from the file


def test_crosscam_quick_and_overrides(monkeypatch):
    from jobs import crosscam

    captured = {}

    def fake_run(config, args):
        captured["plan"] = config
        return None

    monkeypatch.setattr("pipeline.common.ray_utils.init_ray", lambda *a, **k: None)
    monkeypatch.setattr(crosscam, "benchmark", fake_run)
    argv = ["--out", "o", "--quick", "--seeds", "3", "4", "--align-warmup", "5"]
    assert crosscam.main(argv) == 0
    plan = captured["plan"]
    assert plan.seeds == (3, 4) and plan.data == quick_plan().data
    assert plan.train == {**quick_plan().train, "align_warmup": 5}


def test_bad_input_is_an_error_line_and_exit_2(capsys, monkeypatch):
    from jobs import extract, train

    monkeypatch.setattr("pipeline.common.ray_utils.init_ray", lambda *a, **k: None)
    argv = ["--videos", "v", "--annotations", "a.json", "--out", "o", "--modalities", "smell"]
    assert extract.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: modalities must be one of")
    assert train.main(["--features", "f", "--out", "o", "--config", "no-such-recipe"]) == 2
    assert "no-such-recipe" in capsys.readouterr().err


def test_choices_come_from_the_literal_types():
    assert STRATEGIES == typing.get_args(Strategy) == choices_of(Strategy)
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrainConfig.from_flat(features="f", out="o", strategy="sideways")
    from feature_extractors.s3d import EXECUTION_MODES
    from feature_extractors.text import POOLINGS
    from pipeline.extract.job import S3DExecution, TextPooling
    from pipeline.tune.grids import GRID_CHOICES, GRIDS

    assert typing.get_args(S3DExecution) == EXECUTION_MODES
    assert typing.get_args(TextPooling) == POOLINGS
    assert GRID_CHOICES == (*GRIDS, "all")

    @dataclasses.dataclass(frozen=True)
    class Example:
        several: tuple[Strategy, ...] = ()
        maybe: Strategy | None = None

    check_choices(Example(("end2end",), None))
    with pytest.raises(ValueError, match="several"):
        check_choices(Example(("end2end", "x")))


def test_train_config_groups_flat_names_and_old_files():
    config = TrainConfig.from_flat(features="f", out="o", epochs=2, hidden_dim=16, use_gpu=True)
    assert (config.optimization.epochs, config.model.hidden_dim) == (2, 16)
    assert config.resources.use_gpu is True
    assert TrainConfig.from_dict(dataclasses.asdict(config)) == config  # train_loop_config
    old = {**config.to_flat(), "fail_at_epoch": None, "fail_kind": "raise", "address": None}
    assert TrainConfig.from_dict(old) == config  # an older checkpoint.json's train_config
    assert config.replace_flat(lr=0.5).optimization.lr == 0.5
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_flat(features="f", out="o", fail_at_epoch=2)
    assert all(field_help(TrainConfig)[name] for name in config.to_flat())
