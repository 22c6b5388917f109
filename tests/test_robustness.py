"""The robustness report: tables and plot from results, and a tiny end-to-end run on Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.score.robustness import (
    QUICK,
    RobustnessConfig,
    conditions,
    plot_robustness,
    robustness_markdown,
    run_robustness,
    summarize,
)
from pipeline.score.shifts import SEVERITIES, SHIFTS

CLIP = {"weights": "random", "clip_len": 16, "clip_stride": 16}


def fake_results(models=("baseline", "full"), shifts=("blur", "noise")) -> list[dict]:
    results = []
    for offset, model in enumerate(models):
        base = {"model": model, "ablation": model, "acc5": 1.0, "videos": 10, "failed": 0}
        results.append({**base, "shift": "clean", "severity": 0, "parameter": None,
                        "setting": "-", "acc1": 0.8 + 0.1 * offset})  # fmt: skip
        for shift in shifts:
            for severity in SEVERITIES:
                parameter = SHIFTS[shift].levels[severity - 1]
                acc1 = 0.8 + 0.1 * offset - 0.1 * severity / (1 + offset)
                results.append({**base, "shift": shift, "severity": severity, "acc1": acc1,
                                "parameter": parameter,
                                "setting": SHIFTS[shift].setting.format(parameter)})  # fmt: skip
    return results


def test_report_has_one_row_per_shift_and_severity(tmp_path):
    results = fake_results()
    summary = summarize(results)
    # baseline: clean 0.8, mean over severities of 0.8 - 0.1 s = 0.6; full: 0.9 - 0.05 s = 0.8
    assert summary["baseline"]["mean_corrupted_acc1"] == pytest.approx(0.6)
    assert summary["baseline"]["relative_drop"] == pytest.approx(0.25)
    assert summary["full"]["mean_corrupted_acc1"] == pytest.approx(0.8)
    assert summary["full"]["conditions"] == 6
    markdown = robustness_markdown(results, summary)
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    rows = [line.split(" | ") for line in table if line.split(" | ")[0][2:] in SHIFTS]
    assert [(row[0][2:], int(row[1])) for row in rows] == [
        (shift, severity) for shift in ("blur", "noise") for severity in SEVERITIES
    ]
    assert "| clean | 0 | - | 0.800 | 0.900 |" in markdown
    assert "| blur | 2 | sigma 2 px | 0.600 (-0.200) | 0.800 (-0.100) |" in markdown
    assert "| baseline | baseline | 0.800 | 0.600 | 25.0% |" in markdown
    path = plot_robustness(results, tmp_path / "robustness.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_conditions_and_quick():
    config = RobustnessConfig(models=("run",), videos="v", out="o", shifts=("h264",), seed=4)
    assert conditions(config) == [None] + [
        {"name": "h264", "severity": severity, "seed": 4} for severity in SEVERITIES
    ]
    quick = RobustnessConfig(models=("run",), videos="v", out="o", quick=True)
    assert quick.severities == QUICK["severities"] and quick.limit == QUICK["limit"]
    assert len(conditions(quick)) == 1 + len(SHIFTS) * len(QUICK["severities"])
    with pytest.raises(ValueError, match="unknown shift"):
        RobustnessConfig(models=("run",), videos="v", out="o", shifts=("fog",))
    with pytest.raises(ValueError, match="at least one model"):
        RobustnessConfig(models=(), videos="v", out="o")


def write_tiny_model(directory: Path, ablation: str, seed: int) -> Path:
    """A randomly initialised CRIF model in the exported-checkpoint layout of the trainer."""
    import torch
    from safetensors.torch import save_file

    from feature_extractors import build_extractor
    from pipeline.artifact import CHECKPOINT_INFO, CHECKPOINT_WEIGHTS
    from pipeline.crif.model import CRIFConfig, build_model
    from pipeline.ingest.manifest import MSRVTT_CATEGORIES

    semantic = 0 if ablation == "baseline" else 8
    config = CRIFConfig(num_classes=20, semantic_dim=semantic, ablation=ablation,
                        hidden_dim=8, shared_dim=8, rho=4)  # fmt: skip
    torch.manual_seed(seed)
    model = build_model(config)
    model_dir = directory / "model"
    model_dir.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              model_dir / CHECKPOINT_WEIGHTS)  # fmt: skip
    info = {
        "model_config": config.to_dict(),
        "task": "single_label",
        "class_names": list(MSRVTT_CATEGORIES),
        "modalities": {"visual": build_extractor("s3d", CLIP).describe()},
        "train_config": {"ablation": ablation},
    }
    (model_dir / CHECKPOINT_INFO).write_text(json.dumps(info))
    return directory


@pytest.mark.slow
def test_tiny_run_shares_features_and_resumes(ray_session, tmp_path):
    from pipeline.synthetic.videos import SyntheticConfig, generate_synthetic_dataset

    data = generate_synthetic_dataset(
        tmp_path / "data",
        SyntheticConfig(num_videos=5, num_classes=2, duration=1.0, width=64, height=48,
                        test_fraction=0.4, val_fraction=0.0, audio=False, seed=2),
    )  # fmt: skip
    baseline = write_tiny_model(tmp_path / "baseline", "baseline", 0)
    # a second run with the same weights: features and predictions are computed once
    models = (baseline, shutil.copytree(baseline, tmp_path / "again"))
    config = RobustnessConfig(
        models=tuple(str(m) for m in models),
        videos=data["videos"],
        annotations=tuple(data["annotations"]),
        out=str(tmp_path / "out"),
        shifts=("noise",),
        severities=(3,),
    )
    summary = run_robustness(config)
    out = tmp_path / "out"
    document = json.loads((out / "robustness.json").read_text())
    assert len(document["results"]) == 2 * 2  # 2 models x (clean + noise at severity 3)
    assert {r["videos"] for r in document["results"]} == {2}
    assert all(r["failed"] == 0 for r in document["results"])
    assert set(summary["summary"]) == {"baseline", "again"}
    by_model = [
        [r["acc1"] for r in document["results"] if r["model"] == m] for m in summary["summary"]
    ]
    assert by_model[0] == by_model[1]
    markdown = (out / "robustness.md").read_text()
    assert "| clean | 0 |" in markdown and "| noise | 3 | std 32/255 |" in markdown
    assert len(list((out / "_predictions").iterdir())) == 1  # one model id
    # one feature directory per condition, shared by both models (same S3D set-up)
    (setup,) = (out / "_features").iterdir()
    assert sorted(p.name for p in setup.iterdir()) == ["clean", "noise-s3-seed0"]
    clean = feature_rows(setup / "clean")
    noisy = feature_rows(setup / "noise-s3-seed0")
    video = sorted(clean)[0]
    assert clean.keys() == noisy.keys() and not np.allclose(clean[video], noisy[video])
    before = sorted(str(p) for p in out.rglob("part-*.parquet"))
    run_robustness(config)  # resumes: every part is already there
    assert sorted(str(p) for p in out.rglob("part-*.parquet")) == before
    assert json.loads((out / "robustness.json").read_text())["results"] == document["results"]


def feature_rows(directory: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    files = sorted(directory.rglob("part-*.parquet"))
    table = pq.read_table(files, columns=["video_id", "visual"]).to_pylist()
    return {row["video_id"]: np.asarray(row["visual"], np.float32) for row in table}


def test_report_writes_n_a_when_clean_accuracy_is_zero():
    results = [
        {**result, "acc1": 0.0} for result in fake_results(models=("broken",), shifts=("blur",))
    ]
    summary = summarize(results)
    assert summary["broken"]["clean_acc1"] == 0.0
    markdown = robustness_markdown(results, summary)
    assert "nan" not in markdown
    assert "| broken | broken | 0.000 | 0.000 | n/a |" in markdown
