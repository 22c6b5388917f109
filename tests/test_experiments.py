"""Experiment grids: cells as in the paper, table layouts, and the three quick grids run for real
on a tiny synthetic cross-camera benchmark (tables with numbers, t-SNE figure)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.synthetic.crosscam import BenchmarkData, generate_benchmark_store
from pipeline.train.trainer import TrainConfig
from pipeline.tune import grids as experiments
from pipeline.tune import report

TINY = BenchmarkData(num_classes=4, train_cameras=2, test_cameras=1, videos_per_camera=30, clips=3)
TINY_TRAIN = {"epochs_per_stage": 1, "batch_size": 16, "hidden_dim": 16, "shared_dim": 16, "rho": 8}


def test_grids_are_the_papers_cells():
    names = {grid: [cell.name for cell in cells] for grid, cells in experiments.GRIDS.items()}
    assert names["ablation"] == ["baseline", "align", "inference", "fusion"]
    assert names["backbones"] == ["gru-baseline", "gru-align", "vilt-baseline", "vilt-align"]
    assert len(names["alignment"]) == 1 + 2 * 4
    cells = {cell.name: cell for cell in experiments.GRIDS["alignment"]}
    assert cells["clip-coral"].train == {
        "ablation": "full",
        "align_target": "clip",
        "align_fn": "coral",
    }
    assert cells["whole-ssan"].labels == ("Align (whole feature)", "SSAN")
    assert cells["none"].train["alpha_sim"] == cells["none"].train["alpha_align"] == 0.0
    for grid, cells in experiments.GRIDS.items():  # every cell is a valid training config
        for cell in cells:
            TrainConfig.from_flat(features="f", out="o", **cell.train)
        assert set(experiments.TSNE_MODELS[grid]) <= {cell.name for cell in cells}


def _record(cell, seed, value, columns=("CRIF",), split="test"):
    metrics = {"acc1": value, "acc5": 1.0}
    return {
        "cell": cell,
        "seed": seed,
        "columns": {column: metrics for column in columns},
        "splits": {column: split for column in columns},
    }


def test_ablation_table_has_mean_and_spread_per_method():
    records = [_record("baseline", 0, 0.5), _record("baseline", 1, 0.7), _record("align", 0, 0.6)]
    table = experiments.grid_table("ablation", records, "single_label")
    lines = table.splitlines()
    assert lines[0] == "| Method | Acc-1 | Acc-5 |"
    assert lines[2] == "| Baseline | 0.600 ± 0.141 | 1.000 ± 0.000 |"
    assert lines[3] == "| +Align | 0.600 | 1.000 |"  # one seed: no spread
    assert lines[4] == "| +Inference | - | - |"  # a missing (failed) cell
    multi = experiments.grid_table("ablation", [], "multi_label")
    assert multi.splitlines()[0] == "| Method | Pre-1 | Pre-5 | Recall-1 | Recall-5 |"


def test_alignment_and_backbone_tables_mark_semantic_columns():
    columns = experiments.TABLE_V_COLUMNS
    records = [_record(cell.name, 0, 0.5, columns) for cell in experiments.GRIDS["alignment"]]
    lines = experiments.grid_table("alignment", records, "single_label").splitlines()
    assert lines[0] == (
        "| Strategy | Function | Visual | Semantic† | Inference "
        "| V+S† | V+I | S+I† | V+S+I† | CRIF |"
    )
    assert lines[2].startswith("| None | - | 0.500 |")
    assert lines[3].startswith("| Align (whole feature) | L2-Norm |")
    assert lines[4].startswith("|  | KL-D |")  # the strategy is written once, as in Table V
    assert lines[7].startswith("| Clip (key part) | L2-Norm |")
    backbone = [_record("gru-align", 0, 0.8, ("CRIF", "Semantic"))]
    lines = experiments.grid_table("backbones", backbone, "single_label").splitlines()
    assert lines[4] == "| Semantic modality backbone† | GRU | 0.800 | 1.000 |"
    assert lines[5] == "|  | ViLT | - | - |"


def test_report_helpers(tmp_path):
    assert report.mean_and_spread([0.5, 0.7]) == "0.600 ± 0.141"
    assert report.mean_and_spread([]) == "-" and report.format_value(1e-4) == "1.00e-04"
    rows = [{"trial": "a", "status": "completed", "val/acc1": 0.5, "history": [(1, 0.4)]}]
    paths = report.write_table(rows, tmp_path / "results", title="t")
    assert paths["csv"].read_text().splitlines()[0] == "trial,status,val/acc1"
    assert "| a | completed | 0.5000 |" in paths["markdown"].read_text()
    panel = report.TsnePanel("p", np.random.default_rng(0).normal(size=(12, 4)), np.arange(12) % 3)
    pairs = report.TsnePanel("q", np.zeros((8, 4)) + np.arange(8)[:, None], np.arange(8) % 2,
                             np.repeat([0, 1], 4))  # fmt: skip
    assert report.plot_tsne([panel, pairs], tmp_path / "tsne.png").stat().st_size > 0


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    generate_benchmark_store(root, TINY)
    return str(root)


def test_cells_with_the_same_config_share_one_run():
    fixed = {"backbone": "gru", "ablation": "full", "align_fn": "coral", "align_target": "clip"}
    runs, run_of = experiments.grid_runs(tuple(experiments.GRIDS), fixed)
    assert run_of[("alignment", "clip-coral")] == run_of[("ablation", "fusion")] == "fusion"
    assert run_of[("backbones", "gru-baseline")] == "baseline"
    assert run_of[("backbones", "gru-align")] == "align"
    assert len(runs) == 4 + 8 + 2  # 17 cells, 14 distinct trainings
    vilt = {**fixed, "backbone": "vilt"}  # then the GRU rows are runs of their own
    assert len(experiments.grid_runs(("ablation", "backbones"), vilt)[0]) == 4 + 2


@pytest.mark.slow
def test_all_three_grids_write_tables_and_tsne(ray_session, tiny_store, tmp_path):
    config = experiments.ExperimentConfig(
        out=str(tmp_path), grid="all", features=tiny_store, quick=True, seeds=1,
        train=TINY_TRAIN, tsne_per_class=20, tsne_pairs=8,
    )  # fmt: skip
    summary = experiments.run_experiments(config)
    assert summary["failed"] == [] and summary["trials"] == summary["runs"] == 14
    out = tmp_path / "all"
    for grid, rows in (("ablation", 4), ("alignment", 9), ("backbones", 6)):
        table = (out / f"{grid}.md").read_text()
        body = [line for line in table.splitlines() if line.startswith("|")][2:]
        assert len(body) == rows, table
        assert all(" - |" not in line.split("|", 3)[-1] for line in body), table  # all measured
        assert (out / f"{grid}_tsne.png").stat().st_size > 10_000
    run = out / "runs" / "fusion" / "seed-0"  # +Fusion, also Clip + DeepCoral
    assert (run / "model" / "checkpoint.json").is_file() and (run / "metrics.json").is_file()
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["splits"]["CRIF"] == evaluation["splits"]["V+I"] == "test"
    assert evaluation["splits"]["Semantic"] == "val"  # the benchmark's test rows have no text
    assert set(evaluation["columns"]) == set(experiments.TABLE_V_COLUMNS)
