"""Torch-only feature extractors (S3D visual, text captions, VGGish audio) and their registry.

    from feature_extractors import available_extractors, build_extractor, config_from_dict

    extractor = build_extractor("vggish", {"weights": "random"})
    record = extractor.describe()            # {"dim", "extractor", "weights", "config"}
    same = build_extractor(record["extractor"], record["config"])

Importing this package never imports Ray (the pipeline depends on us, not the reverse)
and imports transformers only when a text extractor is built.
"""

from feature_extractors.base import (
    Extractor,
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
    "ClipPlan",
    "Extractor",
    "S3DConfig",
    "S3DExtractor",
    "TextConfig",
    "TextExtractor",
    "VGGishConfig",
    "VGGishExtractor",
    "available_extractors",
    "build_extractor",
    "config_from_dict",
    "config_to_dict",
    "get_extractor",
    "normalize_clips",
    "register_extractor",
]
