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
and imports transformers only when a text extractor is built. The names below are loaded on
first use (torch with them), so the torch-free modules (``feature_extractors.clip_plan``:
clip planning and cropping) import without torch, e.g. on an edge box.
"""

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


def __getattr__(name: str):
    """Load the extractors (and torch) when one of the package's names is first used."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from feature_extractors import _registry

    value = getattr(_registry, name)
    globals()[name] = value
    return value
