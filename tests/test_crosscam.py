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
    hard_plan,
    method_name,
    plan_methods,
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
    plan = dataclasses.replace(
        quick_plan(), seeds=(0, 1), backbones=("gru",), ablations=ABLATIONS,
        strategies=("end2end", "multistage"), semantic_gradients=("stop", "flow"),
    )  # fmt: skip
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
    ]  # older results: no strategy, no gradient mode (end to end, stop)
    staged = [
        {
            **cell,
            "strategy": "multistage",
            "semantic_gradients": "flow",
            "splits": {**cell["splits"], "test": {"acc1": 0.3 + 0.02 * cell["seed"], "acc5": 0.8}},
        }
        for cell in cells
        if cell["ablation"] == "full"
    ]
    summary = summarise(cells + staged, plan)
    # rows with cells only, in plan order
    assert [row["method"] for row in summary["rows"]] == [*ABLATIONS, "full (multistage, flow)"]
    assert [method_name(*m) for m in plan_methods(plan)][:6] == [
        "baseline", "align", "align (flow)", "inference", "inference (flow)", "fusion",
    ]  # fmt: skip
    full = next(row for row in summary["rows"] if row["method"] == "full")
    assert np.isclose(full["test_acc1"]["mean"], 0.91) and np.isclose(
        full["test_acc1"]["std"], 0.02 / np.sqrt(2)
    )
    assert np.isclose(full["gain_acc1_vs_baseline"]["mean"], 0.4)
    multistage = summary["rows"][-1]
    assert (multistage["ablation"], multistage["strategy"]) == ("full", "multistage")
    assert multistage["semantic_gradients"] == "flow"
    assert np.isclose(multistage["gain_acc1_vs_baseline"]["mean"], -0.2)
    table = benchmark_markdown(summary)
    assert "| gru | full | 0.910 ± 0.014 | 0.900 ± 0.000 | +0.400 ± 0.000 |" in table
    assert (
        "| gru | full (multistage, flow) | 0.310 ± 0.014 | 0.800 ± 0.000 | -0.200 ± 0.000 |"
        in table
    )


def test_hard_setting_ties_classes_to_training_cameras(tmp_path):
    config = dataclasses.replace(hard_plan().data, videos_per_camera=60, test_videos_per_camera=30)
    generate_benchmark_store(tmp_path, config)
    table = store.read_store(tmp_path)
    seen = table.filter(pc.not_equal(table["split"], "test"))
    test = table.filter(pc.equal(table["split"], "test"))
    own = [int(c.split("cam")[1]) % config.num_classes for c in seen["camera"].to_pylist()]
    agreement = np.mean(np.asarray(own) == np.asarray(seen["label"]))
    assert agreement > 0.85  # camera k films class k (0.9 plus chance)
    assert test.num_rows == config.test_cameras * 30
    counts = np.bincount(np.asarray(test["label"]), minlength=config.num_classes)
    assert counts.min() > 0  # every class on the new cameras


def test_quick_benchmark_runs_and_writes_the_table(tmp_path, ray_session):
    spec = importlib.util.spec_from_file_location("benchmark_job", REPO / "jobs" / "crosscam.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    job.main(["--out", str(tmp_path), "--quick"])
    summary = json.loads((tmp_path / "benchmark.json").read_text())
    methods = [method_name(*m) for m in plan_methods(quick_plan())]
    assert "full (multistage)" in methods
    assert [(r["backbone"], r["method"]) for r in summary["rows"]] == [
        (backbone, method) for backbone in ("gru", "vilt") for method in methods
    ]
    assert all(0 <= r["test_acc1"]["mean"] <= 1 for r in summary["rows"])
    table = (tmp_path / "benchmark.md").read_text()
    assert table.count("\n| gru |") == len(methods) == table.count("\n| vilt |")
    checkpoint = (
        tmp_path / "runs" / "gru-full-multistage-seed0" / "train" / "local"
        / "checkpoint_epoch=0002" / "checkpoint.json"
    )  # fmt: skip
    recorded = json.loads(checkpoint.read_text())
    assert recorded["train_config"]["strategy"] == "multistage"
    assert [entry["stage"] for entry in recorded["history"]] == [1, 2, 3]
    store.validate_store(tmp_path / "store-seed0")
