"""Torch-only feature extractors (S3D visual, text captions, VGGish audio) and their registry.

    from feature_extractors import available_extractors, build_extractor, config_from_dict

    extractor = build_extractor("vggish", {"weights": "random"})
    record = extractor.describe()            # {"dim", "extractor", "weights", "config"}
    same = build_extractor(record["extractor"], record["config"])
    needs = type(extractor).requirements(extractor.config)   # inputs, modality, batch, resources

A new extractor is a subclass of `Extractor` with a frozen config, passed to
`register_extractor`: the extraction job (pipeline/extract) runs any registered extractor
from its `requirements` alone, and tests/test_extractors.py enrols it in the contract tests.

Importing this package never imports Ray (the pipeline depends on us, not the reverse)
and imports transformers only when a text extractor is built.
"""

from feature_extractors.base import (
    INPUT_KINDS,
    ActorResources,
    CaptionInputs,
    ClipInputs,
    Extractor,
    Requirements,
    WaveformInputs,
    available_extractors,
    build_extractor,
    config_from_dict,
    config_to_dict,
    get_extractor,
    register_extractor,
)
from feature_extractors.s3d import ClipPlan, S3DConfig, S3DExtractor, normalize_clips
from feature_extractors.text import TextConfig, TextExtractor
from feature_extractors.vggish import VGGishConfig, VGGishExtractor

__all__ = [
    "INPUT_KINDS",
    "ActorResources",
    "CaptionInputs",
    "ClipInputs",
    "ClipPlan",
    "Extractor",
    "Requirements",
    "S3DConfig",
    "S3DExtractor",
    "TextConfig",
    "TextExtractor",
    "VGGishConfig",
    "VGGishExtractor",
    "WaveformInputs",
    "available_extractors",
    "build_extractor",
    "config_from_dict",
    "config_to_dict",
    "get_extractor",
    "normalize_clips",
    "register_extractor",
]
