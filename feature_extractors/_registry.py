"""Every built-in extractor imported and registered: what ``feature_extractors`` exports."""

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
from feature_extractors.clip_plan import ClipPlan
from feature_extractors.s3d import S3DConfig, S3DExtractor, normalize_clips
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
