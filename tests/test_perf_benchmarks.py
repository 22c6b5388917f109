"""Smoke runs of every benchmark script: each runs with tiny settings and writes its JSON.

No timing is asserted: the numbers belong to the full runs (README, Performance).

    .venv/bin/python -m pytest -q tests/test_perf_benchmarks.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every benchmark script runs end to end (minutes)

REPO = Path(__file__).resolve().parents[1]
# extraction has its own test below
SCRIPTS = ["limits", "s3d_cpu", "s3d_layers", "memory", "training", "decoders"]


def run(command: list[str], out: Path) -> dict:
    env = {**os.environ, "CRIF_CACHE_DIR": str(out / "cache"), "PYTHONWARNINGS": "ignore"}
    env.pop("RAY_ADDRESS", None)  # a script starts (and stops) its own local Ray
    finished = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return {"stdout": finished.stdout}


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_and_writes_its_json(name, tmp_path):
    script = REPO / "benchmarks" / f"{name}.py"
    output = run([sys.executable, str(script), "--smoke", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["machine"]["cores"] >= 1 and "load_average" in result["machine"]
    assert output["stdout"].strip(), "a benchmark prints its table"


def test_extraction_smoke_reports_ratios_and_equal_features(tmp_path):
    run([sys.executable, "benchmarks/extraction.py", "--smoke", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "extraction.json").read_text())
    check = result["checks"]["cold"]
    assert check["pipeline_vs_loop"] > 0 and check["pipeline_process_vs_model_only_process"] > 0
    assert check["features_equal_1e-3"]


def test_gpu_check_runs_without_a_gpu(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    run(["bash", str(script), "--dry", "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry"] and not result["exercised_on_gpu"]
    assert result["s3d"]["bf16_vs_fp32_max_relative_difference"] < 0.1
    assert result["training"]["steps"] >= 1
