"""The synthetic cross-camera benchmark: its data follows the store contract and the
intended structure, and the quick mode runs end to end and writes the table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from pipeline import store
from pipeline.synthetic.crosscam import (
    ABLATIONS,
    BenchmarkData,
    benchmark_markdown,
    generate_benchmark_store,
    quick_plan,
    summarise,
)

REPO = Path(__file__).resolve().parents[1]


def test_generated_store_is_valid_and_cross_camera(tmp_path):
    config = BenchmarkData(num_classes=5, train_cameras=3, test_cameras=2, videos_per_camera=120)
    metadata = generate_benchmark_store(tmp_path, config)  # validate_store ran inside
    assert metadata["modalities"]["text"]["dim"] == config.text_dim
    table = store.read_store(tmp_path)
    test = table.filter(pc.equal(table["split"], "test"))
    seen = table.filter(pc.not_equal(table["split"], "test"))
    assert test.num_rows == 240 and seen.num_rows == 360
    assert set(test["camera"].to_pylist()).isdisjoint(seen["camera"].to_pylist())
    assert test["text"].null_count == test.num_rows and seen["text"].null_count == 0
    # The scene shortcut: tied to the class on the training cameras only.
    agreement = lambda t: np.mean(np.asarray(t["scene"]) == np.asarray(t["label"]))  # noqa: E731
    assert agreement(seen) > 0.7 and agreement(test) < 0.4
    again = tmp_path / "again"
    generate_benchmark_store(again, config)
    assert store.read_store(again).equals(table)  # a function of the config


def test_summary_and_table_from_cells():
    plan = dataclasses.replace(quick_plan(), seeds=(0, 1), backbones=("gru",))
    cells = [
        {
            "backbone": "gru",
            "ablation": ablation,
            "seed": seed,
            "seconds": 1.0,
            "splits": {
                "test": {"acc1": 0.5 + 0.1 * index + 0.02 * seed, "acc5": 0.9},
                "val": {"acc1": 0.8},
            },
        }
        for index, ablation in enumerate(ABLATIONS)
        for seed in plan.seeds
    ]
    staged = [
        {
            **cell,
            "strategy": "multistage",
            "splits": {**cell["splits"], "test": {"acc1": 0.3 + 0.02 * cell["seed"], "acc5": 0.8}},
        }
        for cell in cells
        if cell["ablation"] == "full"
    ]
    summary = summarise(cells + staged, plan)
    assert [row["method"] for row in summary["rows"]] == [*ABLATIONS, "full (multistage)"]
    full = next(row for row in summary["rows"] if row["method"] == "full")
    assert np.isclose(full["test_acc1"]["mean"], 0.91) and np.isclose(
        full["test_acc1"]["std"], 0.02 / np.sqrt(2)
    )
    assert np.isclose(full["gain_acc1_vs_baseline"]["mean"], 0.4)
    multistage = summary["rows"][-1]
    assert (multistage["ablation"], multistage["strategy"]) == ("full", "multistage")
    assert np.isclose(multistage["gain_acc1_vs_baseline"]["mean"], -0.2)
    table = benchmark_markdown(summary)
    assert "| gru | full | 0.910 ± 0.014 | 0.900 ± 0.000 | +0.400 ± 0.000 |" in table
    assert "| gru | full (multistage) | 0.310 ± 0.014 | 0.800 ± 0.000 | -0.200 ± 0.000 |" in table


def test_quick_benchmark_runs_and_writes_the_table(tmp_path, ray_session):
    spec = importlib.util.spec_from_file_location("benchmark_job", REPO / "jobs" / "crosscam.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.main(["--out", str(tmp_path), "--quick"])
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    methods = [*ABLATIONS, "full (multistage)"]
    assert [(r["backbone"], r["method"]) for r in summary["rows"]] == [
        (backbone, method) for backbone in ("gru", "vilt") for method in methods
    ]
    assert all(0 <= r["test_acc1"]["mean"] <= 1 for r in summary["rows"])
    table = (tmp_path / "benchmark.md").read_text()
    assert table.count("\n| gru |") == 6 and table.count("\n| vilt |") == 6
    assert (
        json.loads(
            (
                tmp_path
                / "runs"
                / "gru-full-multistage-seed0"
                / "train"
                / "local"
                / "checkpoint_epoch=0002"
                / "checkpoint.json"
            ).read_text()
        )["train_config"]["strategy"]
        == "multistage"
    )
    store.validate_store(tmp_path / "store-seed0")
