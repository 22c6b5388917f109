"""VGGish: the torch front end against a NumPy transcription of the AudioSet reference,
the PCA postprocessor against hand-computed values, and weight loading.

    .venv/bin/python -m pytest -q tests/test_vggish_frontend.py
"""

from __future__ import annotations

import functools
import warnings
import wave

import numpy as np
import pytest
import torch

from feature_extractors.vggish import (
    VGGishConfig,
    VGGishExtractor,
    VGGishNetwork,
    log_mel_spectrogram,
    mel_matrix,
    postprocess_embeddings,
    waveform_to_examples,
)

torch.set_num_threads(1)

RECORDINGS = ["mmaction2_test.wav", "torchvggish_test.wav"]


# Reference: tensorflow/models research/audioset/vggish mel_features.py + vggish_input.py,
# transcribed faithfully (loops, float64, stride tricks) so our vectorised torch version has
# something independent to be checked against.


def reference_frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    num_samples = data.shape[0]
    num_frames = 1 + int(np.floor((num_samples - window_length) / hop_length))
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides)


def reference_periodic_hann(window_length: int) -> np.ndarray:
    return 0.5 - (0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length)))


def reference_stft_magnitude(signal, fft_length, hop_length, window_length) -> np.ndarray:
    frames = reference_frame(signal, window_length, hop_length)
    windowed_frames = frames * reference_periodic_hann(window_length)
    return np.abs(np.fft.rfft(windowed_frames, int(fft_length)))


def reference_hertz_to_mel(frequencies_hertz):
    return 1127.0 * np.log(1.0 + (frequencies_hertz / 700.0))


def reference_mel_matrix(
    num_mel_bins, num_spectrogram_bins, audio_sample_rate, lower_edge_hertz, upper_edge_hertz
) -> np.ndarray:
    nyquist_hertz = audio_sample_rate / 2.0
    spectrogram_bins_hertz = np.linspace(0.0, nyquist_hertz, num_spectrogram_bins)
    spectrogram_bins_mel = reference_hertz_to_mel(spectrogram_bins_hertz)
    band_edges_mel = np.linspace(
        reference_hertz_to_mel(lower_edge_hertz),
        reference_hertz_to_mel(upper_edge_hertz),
        num_mel_bins + 2,
    )
    mel_weights_matrix = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lower_edge_mel, center_mel, upper_edge_mel = band_edges_mel[i : i + 3]
        lower_slope = (spectrogram_bins_mel - lower_edge_mel) / (center_mel - lower_edge_mel)
        upper_slope = (upper_edge_mel - spectrogram_bins_mel) / (upper_edge_mel - center_mel)
        mel_weights_matrix[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    mel_weights_matrix[0, :] = 0.0
    return mel_weights_matrix


def reference_log_mel(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """vggish_input.waveform_to_examples up to the log-mel, for 16 kHz input.

    Mono as the reference: a 2-D waveform is (samples, channels), averaged over axis 1.
    """
    assert sample_rate == 16000, "the test only feeds 16 kHz audio (no resampy here)"
    if waveform.ndim > 1:
        waveform = np.mean(waveform, axis=1)
    window_length_samples = int(round(sample_rate * 0.025))
    hop_length_samples = int(round(sample_rate * 0.010))
    fft_length = 2 ** int(np.ceil(np.log(window_length_samples) / np.log(2.0)))
    spectrogram = reference_stft_magnitude(
        waveform, fft_length, hop_length_samples, window_length_samples
    )
    mel_spectrogram = np.dot(
        spectrogram, reference_mel_matrix(64, spectrogram.shape[1], sample_rate, 125.0, 7500.0)
    )
    return np.log(mel_spectrogram + 0.01)


def reference_examples(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    return reference_frame(reference_log_mel(waveform, sample_rate), 96, 96)


# Helpers -------------------------------------------------------------------------------------


def read_wav(path) -> tuple[np.ndarray, int]:
    """16-bit PCM wav -> float64 (samples, channels) in [-1, 1], as the reference reads it."""
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        samples = data.reshape(-1, wav.getnchannels()) / 32768.0
        return samples, wav.getframerate()


@functools.cache
def random_extractor(pca: str | None = None, quantize: bool = False) -> VGGishExtractor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VGGishExtractor(VGGishConfig(weights="random", pca=pca, quantize=quantize))


def tone(frequency: float, seconds: float, sample_rate: int) -> np.ndarray:
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


# Front end -----------------------------------------------------------------------------------


def test_mel_matrix_matches_reference():
    ours = mel_matrix(VGGishConfig()).numpy()
    reference = reference_mel_matrix(64, 257, 16000, 125.0, 7500.0)
    assert ours.shape == (257, 64)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12)
    assert np.all(ours[0] == 0.0)  # DC bin excluded, as HTK


@pytest.mark.parametrize("file_name", RECORDINGS)
def test_log_mel_matches_reference_on_real_recordings(shared_data, file_name):
    samples, sample_rate = read_wav(shared_data / "audio" / file_name)
    reference = reference_log_mel(samples, sample_rate)
    ours = log_mel_spectrogram(torch.from_numpy(samples.T.copy()), sample_rate).numpy()
    assert ours.shape == reference.shape == (1 + (len(samples) - 400) // 160, 64)
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize("file_name", RECORDINGS)
def test_preprocess_gives_reference_examples(shared_data, file_name):
    samples, sample_rate = read_wav(shared_data / "audio" / file_name)
    reference = reference_examples(samples, sample_rate)
    waveform = samples.T.astype(np.float32)  # (channels, samples): our layout
    examples = random_extractor().preprocess(waveform, sample_rate)
    # The pure function decode workers use (no model) gives the same examples.
    np.testing.assert_array_equal(
        waveform_to_examples(waveform, sample_rate, VGGishConfig()), examples
    )
    assert examples.dtype == np.float32
    assert examples.shape == reference.shape == (len(reference), 96, 64)
    # float32 input here vs float64 in the reference: still well under 1e-4.
    assert np.abs(examples - reference).max() < 1e-4


def test_short_audio_is_padded_with_silence_to_one_example():
    extractor = random_extractor()
    half_second = tone(440.0, 0.5, 16000)
    examples = extractor.preprocess(half_second, 16000)
    assert examples.shape == (1, 96, 64)
    # Frames entirely after the real audio are silence: log(0 + 0.01).
    last_real_frame = (len(half_second) - 400) // 160
    np.testing.assert_allclose(examples[0, last_real_frame + 3 :], np.log(0.01), atol=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        extractor.preprocess(np.zeros(0, dtype=np.float32), 16000)


def test_example_count_drops_the_partial_tail():
    examples = random_extractor().preprocess(tone(440.0, 2.0, 16000), 16000)
    # 32000 samples -> 1 + (32000 - 400) // 160 = 198 frames -> 1 + (198 - 96) // 96 = 2.
    assert examples.shape == (2, 96, 64)


def test_channels_are_averaged_and_layout_checked():
    extractor = random_extractor()
    left, right = tone(440.0, 1.0, 16000), tone(1000.0, 1.0, 16000)
    stereo = extractor.preprocess(np.stack([left, right]), 16000)
    mono = extractor.preprocess((left + right) / 2, 16000)
    np.testing.assert_allclose(stereo, mono, atol=1e-6)
    with pytest.raises(ValueError, match="channels, samples"):
        extractor.preprocess(np.stack([left, right]).T, 16000)


def test_other_sample_rates_are_resampled_to_16k():
    extractor = random_extractor()
    at_16k = extractor.preprocess(tone(1000.0, 2.0, 16000), 16000)
    at_44k = extractor.preprocess(tone(1000.0, 2.0, 44100), 44100)
    assert at_44k.shape == at_16k.shape
    # Same dominant mel band, and close log-mel values away from the edges.
    assert at_44k[0, 10:80].mean(0).argmax() == at_16k[0, 10:80].mean(0).argmax()
    assert np.abs(at_44k[0, 10:80] - at_16k[0, 10:80]).max() < 0.05


# Postprocessing ------------------------------------------------------------------------------


def test_postprocess_hand_computed():
    embeddings = np.zeros((1, 128))
    embeddings[0, :3] = [1.5, -0.5, 3.0]
    means = np.zeros(128)
    means[0] = 1.0
    eigen_vectors = np.eye(128) * 0.5
    eigen_vectors[0, 0] = 2.0  # out0 = 2.0 * (1.5 - 1.0) = 1.0
    eigen_vectors[2, 2] = 1.0  # out2 = 3.0, clipped to 2.0
    eigen_vectors[3, 1] = 1.0  # out3 = 0.5 * 0 + 1.0 * -0.5 = -0.5; out1 = 0.5 * -0.5
    projected = postprocess_embeddings(embeddings, eigen_vectors, means, quantize=False)
    assert projected.dtype == np.float32
    np.testing.assert_allclose(projected[0, :4], [1.0, -0.25, 2.0, -0.5])
    assert np.all(projected[0, 4:] == 0.0)
    quantized = postprocess_embeddings(embeddings, eigen_vectors, means, quantize=True)
    # round((v + 2) * 255 / 4): 191.25 -> 191, 111.5625 -> 112, 255, 95.625 -> 96, 127.5 -> 128.
    np.testing.assert_array_equal(quantized[0, :4], [191.0, 112.0, 255.0, 96.0])
    assert np.all(quantized[0, 4:] == 128.0)


def test_extractor_applies_pca_and_quantisation(shared_data):
    pca_path = str(shared_data / "vggish_pca_params.npz")
    plain = random_extractor()
    quantized = random_extractor(pca=pca_path, quantize=True)
    examples = plain.example_input(3)
    raw = plain(examples)
    params = np.load(pca_path)
    expected = postprocess_embeddings(
        raw, params["pca_eigen_vectors"], params["pca_means"], quantize=True
    )
    output = quantized(examples)
    assert output.shape == (3, 128) and output.dtype == np.float32
    np.testing.assert_array_equal(output, expected)
    assert output.min() >= 0 and output.max() <= 255 and np.all(output == np.round(output))
    assert "vggish_pca_params.npz sha256:" in quantized.describe()["weights"]


def test_quantize_needs_pca_and_pca_file_errors(tmp_path):
    with pytest.raises(ValueError, match="needs pca"):
        VGGishConfig(quantize=True)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        VGGishExtractor(VGGishConfig(pca=str(tmp_path / "missing.npz")))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, something=np.zeros(3))
    with pytest.raises(ValueError, match="wrong.npz"):
        VGGishExtractor(VGGishConfig(pca=str(wrong)))


# Network and weights -------------------------------------------------------------------------

TORCHVGGISH_KEYS = {
    "features.0": (64, 1, 3, 3),
    "features.3": (128, 64, 3, 3),
    "features.6": (256, 128, 3, 3),
    "features.8": (256, 256, 3, 3),
    "features.11": (512, 256, 3, 3),
    "features.13": (512, 512, 3, 3),
    "embeddings.0": (4096, 12288),
    "embeddings.2": (4096, 4096),
    "embeddings.4": (128, 4096),
}


def test_state_dict_keys_match_torchvggish():
    shapes = {key: tuple(value.shape) for key, value in VGGishNetwork().state_dict().items()}
    expected = {f"{layer}.weight": shape for layer, shape in TORCHVGGISH_KEYS.items()}
    expected |= {f"{layer}.bias": (shape[0],) for layer, shape in TORCHVGGISH_KEYS.items()}
    assert shapes == expected


def test_embedding_is_taken_before_the_final_relu():
    output = random_extractor()(random_extractor().example_input(4))
    assert (output < 0).any()  # a trailing ReLU would make every value >= 0


def test_state_dict_round_trip(tmp_path):
    source = random_extractor()
    path = tmp_path / "vggish-test.pth"
    # As a whole torchvggish model would save it: network weights plus its PCA as pproc.*.
    state_dict = dict(source.model.state_dict())
    state_dict["pproc.pca_means"] = torch.zeros(128, 1)
    torch.save(state_dict, path)
    loaded = VGGishExtractor(VGGishConfig(weights=str(path)))
    examples = source.example_input(2)
    np.testing.assert_array_equal(loaded(examples), source(examples))
    assert loaded.describe()["weights"].startswith("vggish-test.pth sha256:")


def test_bad_weight_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        VGGishExtractor(VGGishConfig(weights=str(tmp_path / "absent.pth")))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"definitely not a torch checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        VGGishExtractor(VGGishConfig(weights=str(corrupt)))
    wrong_keys = tmp_path / "wrong_keys.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong_keys)
    with pytest.raises(ValueError, match="wrong_keys.pth.*missing keys"):
        VGGishExtractor(VGGishConfig(weights=str(wrong_keys)))
