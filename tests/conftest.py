"""Shared fixtures: one local Ray per test session, the shared sample data, tiny thread pools."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch and BLAS to one thread per process: the test machine has 2 cores and Ray
# workers run beside the test process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample videos and recordings in ../shared/data (skip when absent)."""
    if not (SHARED_DATA / "videos").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (see DESIGN.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) for the whole session, shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}},
        )
    yield ray
    ray.shutdown()
