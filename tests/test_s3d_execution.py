"""S3D execution modes (eager, channels_last, compile, auto): same features, and "auto"
compiles only when a package is cached or the job repays the build.

The real AOTInductor build takes minutes on 2 cores, so the fast tests stand a fake package
in for it; set CRIF_TEST_COMPILE=1 to build and check a real one (or run
benchmarks/s3d_cpu.py, which compares every mode's features with eager).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch

from feature_extractors import s3d as s3d_module
from feature_extractors.s3d import S3DConfig, S3DExtractor, compiled_package_path

CONFIG = S3DConfig(weights="random", clip_len=16, clip_stride=16)


def build(**kwargs) -> S3DExtractor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return S3DExtractor(CONFIG, **kwargs)


@pytest.fixture(scope="module")
def eager():
    torch.set_num_threads(1)
    extractor = build()
    clips = extractor.example_input(1)
    return extractor, clips, extractor(clips)


@pytest.fixture
def fake_compiler(monkeypatch):
    """Building writes a marker file; loading returns the channels-last eager model."""
    calls = {"built": 0, "loaded": 0}

    def fake_build(model, config, path):
        calls["built"] += 1
        path.write_bytes(b"fake package")

    def fake_load(path):
        calls["loaded"] += 1
        return fake_load.model

    monkeypatch.setattr(s3d_module, "_build_compiled_package", fake_build)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", fake_load, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fake_load.model, _ = s3d_module.build_s3d_backbone("random")
    fake_load.model = fake_load.model.eval().to(memory_format=torch.channels_last_3d)
    return calls


def test_unknown_execution_is_refused():
    with pytest.raises(ValueError, match="execution must be one of"):
        build(execution="fast")


def test_auto_does_not_compile_a_small_job_without_a_cached_package(eager, tmp_path):
    extractor = build(execution="auto", expected_clips=10, cache_dir=tmp_path)
    assert extractor.execution == "channels_last"
    assert not list(tmp_path.glob("*.pt2"))
    reference, clips, features = eager
    np.testing.assert_allclose(extractor(clips), features, rtol=1e-4, atol=1e-4)
    assert extractor.describe() == reference.describe()  # the mode is not recorded


def test_auto_compiles_a_large_job_once_and_reuses_the_package(eager, tmp_path, fake_compiler):
    large = s3d_module.COMPILE_BREAK_EVEN_CLIPS * 4  # 16-frame clips count a quarter each
    first = build(execution="auto", expected_clips=large, cache_dir=tmp_path)
    assert first.execution == "compile" and fake_compiler["built"] == 1
    again = build(execution="auto", expected_clips=1, cache_dir=tmp_path)  # cached: compile
    assert again.execution == "compile" and fake_compiler == {"built": 1, "loaded": 2}
    _, clips, features = eager
    two = np.concatenate([clips, clips[:, ::-1]])  # compiled for one clip: called per clip
    expected = np.concatenate([features, eager[0](clips[:, ::-1].copy())])
    np.testing.assert_allclose(again(two), expected, rtol=1e-4, atol=1e-4)


def test_a_failed_build_falls_back_under_auto_and_raises_under_compile(tmp_path, monkeypatch):
    def no_compiler(model, config, path):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(s3d_module, "_build_compiled_package", no_compiler)
    large = s3d_module.COMPILE_BREAK_EVEN_CLIPS * 4
    assert build(execution="auto", expected_clips=large, cache_dir=tmp_path).execution == (
        "channels_last"
    )
    with pytest.raises(RuntimeError, match="no C..? compiler"):
        build(execution="compile", cache_dir=tmp_path)


def test_package_key_follows_weights_shape_and_threads(eager, tmp_path):
    extractor = eager[0]
    path = compiled_package_path(extractor.model, CONFIG, tmp_path)
    assert path.parent == tmp_path and path.name.startswith("s3d-16x224-t1-")
    longer = dataclasses.replace(CONFIG, clip_len=32)
    assert compiled_package_path(extractor.model, longer, tmp_path) != path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other, _ = s3d_module.build_s3d_backbone("random")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert compiled_package_path(other, CONFIG, tmp_path) != path
    torch.set_num_threads(2)
    try:
        assert compiled_package_path(extractor.model, CONFIG, tmp_path) != path
    finally:
        torch.set_num_threads(1)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CRIF_CACHE_DIR", str(tmp_path / "crif"))
    assert s3d_module.compile_cache_dir() == tmp_path / "crif" / "s3d"
    monkeypatch.delenv("CRIF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert s3d_module.compile_cache_dir() == tmp_path / "xdg" / "crif-ray" / "s3d"


def test_gpu_never_compiles(monkeypatch, tmp_path):
    extractor = build()
    extractor.device = torch.device("cuda")  # resolution only: nothing runs on the device
    assert extractor._resolve("compile", None, tmp_path) == "channels_last"
    assert extractor._resolve("auto", 10**6, tmp_path) == "channels_last"


@pytest.mark.skipif(
    not os.environ.get("CRIF_TEST_COMPILE"),
    reason="a real build takes minutes; CRIF_TEST_COMPILE=1",
)
def test_real_compiled_package_gives_eager_features(eager, tmp_path):
    extractor = build(execution="compile", cache_dir=tmp_path)
    assert extractor.execution == "compile" and len(list(tmp_path.glob("*.pt2"))) == 1
    _, clips, features = eager
    relative = np.abs(extractor(clips) - features).max() / np.abs(features).max()
    assert relative <= 1e-3
