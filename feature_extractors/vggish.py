"""VGGish audio features: one 128-d embedding per 0.96 s of audio.

    extractor = VGGishExtractor(VGGishConfig(weights="/path/vggish-10086976.pth",
                                             pca="/path/vggish_pca_params.npz"))
    examples = extractor.preprocess(waveform, sample_rate)   # (N, 96, 64) float32 log-mel
    embeddings = extractor(examples)                          # (N, 128) float32

The front end reproduces the AudioSet reference (tensorflow/models research/audioset/vggish,
vggish_input.py + mel_features.py, as ported by harritaylor/torchvggish) in torch: mono,
16 kHz, 25 ms periodic-Hann windows every 10 ms, |rfft| over 512 points, a 64-band HTK mel
matrix over 125-7500 Hz with the DC bin zeroed, log(mel + 0.01), then 96-frame examples
every 96 frames. tests/test_vggish_frontend.py checks it against a NumPy transcription of
the reference. One deliberate difference: resampling uses torchaudio's windowed sinc, not
resampy, so non-16 kHz input differs slightly from the reference.

The network is torchvggish's (state-dict keys match `vggish-10086976.pth`), except that the
embedding is taken BEFORE the final ReLU: that is what the TensorFlow reference returns
(fc2 with activation_fn=None; "the embedding value is pre-activation" in its README), while
torchvggish's forward applies a ReLU (harritaylor/torchvggish issue #24). The optional PCA
postprocessing is that of vggish_postprocess.Postprocessor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from feature_extractors.base import (
    Extractor,
    WaveformInputs,
    describe_file,
    load_weights,
    register_extractor,
)

__all__ = [
    "EMBEDDING_DIM",
    "VGGishConfig",
    "VGGishExtractor",
    "VGGishNetwork",
    "frame_examples",
    "load_pca_params",
    "log_mel_spectrogram",
    "mel_matrix",
    "postprocess_embeddings",
    "prepare_waveform",
    "waveform_to_examples",
]

EMBEDDING_DIM = 128
QUANTIZE_MIN = -2.0
QUANTIZE_MAX = 2.0


@dataclass(frozen=True)
class VGGishConfig:
    """Weights, PCA and the exact front end (defaults: vggish_params.py of the reference).

    weights: "random" | path to a torchvggish-format .pth state dict. pca: None | path to
    vggish_pca_params.npz (pca_eigen_vectors 128x128, pca_means 128). quantize: 8-bit
    quantisation after PCA, as the released AudioSet embeddings (needs pca).
    """

    weights: str = "random"
    pca: str | None = None
    quantize: bool = False
    sample_rate: int = 16000
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    fft_size: int = 512
    mel_bands: int = 64
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: float = 0.01
    example_window_seconds: float = 0.96
    example_hop_seconds: float = 0.96

    def __post_init__(self) -> None:
        if self.quantize and self.pca is None:
            raise ValueError("quantize=True needs pca (quantisation follows the PCA)")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got {self.fmin}, {self.fmax}")
        if self.fft_size < self.window_samples:
            raise ValueError(f"fft_size {self.fft_size} < window of {self.window_samples}")

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)  # 400

    @property
    def hop_samples(self) -> int:
        return round(self.sample_rate * self.hop_seconds)  # 160

    @property
    def example_frames(self) -> int:
        return round(self.example_window_seconds / self.hop_seconds)  # 96

    @property
    def example_hop_frames(self) -> int:
        return round(self.example_hop_seconds / self.hop_seconds)  # 96


# Front end ---------------------------------------------------------------------------------


def prepare_waveform(waveform: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int):
    """(samples,) or (channels, samples), float or int16 -> mono float32 (samples,) at
    target_rate. int16 is scaled by 1/32768 as the reference's wav reader does."""
    waveform = torch.as_tensor(waveform)
    if waveform.dtype == torch.int16:
        waveform = waveform.to(torch.float32) / 32768.0
    waveform = waveform.to(torch.float32)
    if waveform.ndim == 2:
        if waveform.shape[0] > waveform.shape[1]:
            raise ValueError(f"expected (channels, samples), got {tuple(waveform.shape)}")
        waveform = waveform.mean(dim=0)
    if waveform.ndim != 1 or waveform.numel() == 0:
        raise ValueError(f"expected a non-empty (samples,) waveform, got {tuple(waveform.shape)}")
    if sample_rate != target_rate:
        import torchaudio.functional

        waveform = torchaudio.functional.resample(waveform, int(sample_rate), int(target_rate))
    return waveform


def mel_matrix(config: VGGishConfig) -> torch.Tensor:
    """float64 (fft_size // 2 + 1, mel_bands) HTK triangles, linear in mel; DC row zeroed.

    Same construction as mel_features.spectrogram_to_mel_matrix: mel = 1127 ln(1 + f / 700),
    band edges evenly spaced in mel from fmin to fmax.
    """

    def hertz_to_mel(frequencies: torch.Tensor) -> torch.Tensor:
        return 1127.0 * torch.log(1.0 + frequencies / 700.0)

    num_bins = config.fft_size // 2 + 1
    bins_mel = hertz_to_mel(
        torch.linspace(0.0, config.sample_rate / 2, num_bins, dtype=torch.float64)
    )
    edges = torch.linspace(
        hertz_to_mel(torch.tensor(config.fmin, dtype=torch.float64)).item(),
        hertz_to_mel(torch.tensor(config.fmax, dtype=torch.float64)).item(),
        config.mel_bands + 2,
        dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # (bands,) each
    rising = (bins_mel[:, None] - lower) / (center - lower)  # (bins, bands)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0, :] = 0.0  # HTK excludes the DC bin
    return weights


def log_mel_spectrogram(
    waveform: torch.Tensor, sample_rate: int, config: VGGishConfig | None = None
) -> torch.Tensor:
    """Waveform -> float32 (frames, mel_bands) log-mel, frames = 1 + (samples - 400) // 160.

    Mono conversion and resampling first (see prepare_waveform); no padding, so fewer than
    one window of samples gives 0 frames, as in the reference.
    """
    config = config or VGGishConfig()
    signal = prepare_waveform(waveform, sample_rate, config.sample_rate).to(torch.float64)
    if signal.numel() < config.window_samples:
        return torch.zeros((0, config.mel_bands), dtype=torch.float32)
    frames = signal.unfold(0, config.window_samples, config.hop_samples)  # (F, 400)
    window = torch.hann_window(config.window_samples, periodic=True, dtype=torch.float64)
    magnitude = torch.fft.rfft(frames * window, n=config.fft_size).abs()  # (F, 257)
    mel = magnitude @ mel_matrix(config)  # (F, 64)
    return torch.log(mel + config.log_offset).to(torch.float32)


def frame_examples(log_mel: torch.Tensor, window: int, hop: int) -> torch.Tensor:
    """(frames, bands) -> (N, window, bands), N = 1 + (frames - window) // hop; tail dropped."""
    if log_mel.shape[0] < window:
        return log_mel.new_zeros((0, window, log_mel.shape[1]))
    return log_mel.unfold(0, window, hop).transpose(1, 2).contiguous()  # (N, window, bands)


def waveform_to_examples(
    waveform: np.ndarray | torch.Tensor, sample_rate: int, config: VGGishConfig
) -> np.ndarray:
    """float32 (samples,) or (channels, samples) -> float32 (N, 96, 64) log-mel examples.

    Audio shorter than one example (0.96 s) is zero-padded (silence) at the end to one
    example, so any non-empty audio gives at least one row; longer audio drops its tail
    shorter than a full example, as the reference does. A pure function of the config, so
    decode workers need no model.
    """
    signal = prepare_waveform(waveform, sample_rate, config.sample_rate)
    min_samples = (config.example_frames - 1) * config.hop_samples + config.window_samples
    if signal.numel() < min_samples:
        signal = torch.nn.functional.pad(signal, (0, min_samples - signal.numel()))
    log_mel = log_mel_spectrogram(signal, config.sample_rate, config)  # (F, 64)
    examples = frame_examples(log_mel, config.example_frames, config.example_hop_frames)
    return examples.numpy()


# Network and postprocessing ----------------------------------------------------------------


class VGGishNetwork(nn.Module):
    """torchvggish's VGG: same module layout and state-dict keys, pre-ReLU embedding."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for width in (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool"):
            if width == "pool":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = width
        self.features = nn.Sequential(*layers)
        # Keys embeddings.0 / .2 / .4 as torchvggish; its trailing ReLU is left out on purpose.
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, EMBEDDING_DIM),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        """(N, 96, 64) or (N, 1, 96, 64) log-mel -> (N, 128)."""
        if examples.ndim == 3:
            examples = examples.unsqueeze(1)  # (N, 1, 96, 64)
        features = self.features(examples)  # (N, 512, 6, 4)
        # Flatten in (H, W, C) order, as the TensorFlow model the weights come from.
        features = features.permute(0, 2, 3, 1).reshape(features.shape[0], -1)  # (N, 12288)
        return self.embeddings(features)


def load_pca_params(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """vggish_pca_params.npz -> (eigen_vectors (128, 128), means (128,)) float64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PCA params file not found: {path}")
    try:
        with np.load(path) as params:
            eigen_vectors = np.asarray(params["pca_eigen_vectors"], dtype=np.float64)
            means = np.asarray(params["pca_means"], dtype=np.float64).reshape(-1)
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(
            f"cannot read PCA params {path} (need pca_eigen_vectors and pca_means): {error}"
        ) from error
    if eigen_vectors.shape != (EMBEDDING_DIM, EMBEDDING_DIM) or means.shape != (EMBEDDING_DIM,):
        raise ValueError(f"bad PCA shapes in {path}: {eigen_vectors.shape}, {means.shape}")
    return eigen_vectors, means


def postprocess_embeddings(
    embeddings: np.ndarray, eigen_vectors: np.ndarray, means: np.ndarray, quantize: bool
) -> np.ndarray:
    """The reference Postprocessor: (x - means) @ eigen_vectors.T, clip to [-2, 2], and with
    quantize round((x + 2) * 255 / 4) to 0..255. (N, 128) -> float32 (N, 128)."""
    projected = (np.asarray(embeddings, dtype=np.float64) - means) @ eigen_vectors.T
    clipped = np.clip(projected, QUANTIZE_MIN, QUANTIZE_MAX)
    if quantize:
        clipped = np.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))
    return clipped.astype(np.float32)


def _he_initialised(network: VGGishNetwork) -> VGGishNetwork:
    """He (fan_in) init, so random embeddings have a realistic O(1) scale, not ~0.01."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return network


def build_vggish_network(weights: str) -> tuple[VGGishNetwork, str]:
    """VGGishNetwork with "random" (seeded) or torchvggish-format weights, and a description."""
    # A whole torchvggish VGGish state dict also holds its PCA as pproc.*: not ours to load.
    return load_weights(
        "vggish", weights, VGGishNetwork, initialise=_he_initialised, ignore_prefixes=("pproc.",)
    )


@register_extractor
class VGGishExtractor(Extractor):
    """Waveform -> 0.96 s log-mel examples -> one 128-d embedding per example."""

    name = "vggish"
    modality = "audio"
    config_class = VGGishConfig
    batch_size = 8  # videos per model call (all their examples in one forward)
    feature_dim = EMBEDDING_DIM

    def __init__(self, config: VGGishConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(config, device)
        # PCA first: a bad path fails before the 290 MB network is built.
        self.pca = load_pca_params(config.pca) if config.pca is not None else None
        network, description = build_vggish_network(config.weights)
        self.model = network.to(self.device).eval()
        if config.pca is not None:
            description += f"; pca {describe_file(config.pca)}"
        self.weights_description = description

    @classmethod
    def inputs(cls, config: VGGishConfig) -> WaveformInputs:
        return WaveformInputs(
            sample_rate=config.sample_rate,
            window_seconds=config.example_window_seconds,
            hop_seconds=config.example_hop_seconds,
        )

    @classmethod
    def prepare_audio(cls, config: VGGishConfig, waveform, sample_rate: int) -> np.ndarray:
        """Native-rate waveform -> float32 (N, 96, 64) log-mel examples (waveform_to_examples)."""
        return waveform_to_examples(waveform, sample_rate, config)

    @property
    def output_dim(self) -> int:
        return EMBEDDING_DIM

    def preprocess(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 (samples,) or (channels, samples) -> float32 (N, 96, 64) log-mel examples
        (see `waveform_to_examples`)."""
        return waveform_to_examples(waveform, sample_rate, self.config)

    def __call__(self, examples: np.ndarray | torch.Tensor) -> np.ndarray:
        """float32 (N, 96, 64) log-mel examples -> float32 (N, 128) (PCA'd if configured)."""
        examples = torch.as_tensor(examples, dtype=torch.float32)
        expected = (self.config.example_frames, self.config.mel_bands)
        if examples.ndim != 3 or tuple(examples.shape[1:]) != expected:
            raise ValueError(f"expected (N, *{expected}) examples, got {tuple(examples.shape)}")
        if examples.shape[0] == 0:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            embeddings = self.model(examples.to(self.device)).float().cpu().numpy()
        if self.pca is not None:
            embeddings = postprocess_embeddings(embeddings, *self.pca, self.config.quantize)
        return embeddings

    def example_input(self, batch_size: int = 2) -> np.ndarray:
        generator = np.random.default_rng(0)
        shape = (batch_size, self.config.example_frames, self.config.mel_bands)
        # Log-mel values of real audio lie roughly in [log(0.01), 3].
        return generator.uniform(math.log(0.01), 3.0, size=shape).astype(np.float32)
