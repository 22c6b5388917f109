"""Decoding audio tracks for the extractors; video decoding lives in :mod:`pipeline.decode`.

Audio is decoded with PyAV from the container (any codec), kept at its native rate and
down-mixed by averaging channels; resampling to 16 kHz is the audio extractor's own
preprocessing. Video clips (``iter_clips``, ``probe_video``) are re-exported from
:mod:`pipeline.decode` for the callers that import them from here.

Paths may be local files, pyarrow-filesystem URIs or ``archive.tar::member`` references;
the latter two are read into memory (one video) through :func:`pipeline.ingest.manifest.open_input`.
"""

from __future__ import annotations

import numpy as np

from pipeline.decode.backends import MAX_PIXELS, MIN_FRAMES, DecodeError, VideoInfo
from pipeline.decode.backends import first_line as _first_line
from pipeline.decode.backends import open_source as _source
from pipeline.decode.clips import iter_clips, probe_video

__all__ = [
    "DecodeError",
    "MAX_PIXELS",
    "MIN_FRAMES",
    "VideoInfo",
    "decode_audio",
    "iter_clips",
    "probe_video",
]


def decode_audio(path: str) -> tuple[np.ndarray, int] | None:
    """Mono float32 waveform and its native sample rate, or None when there is no audio."""
    import av

    with _source(path) as source:
        try:
            container = av.open(source)
        except Exception as error:
            raise DecodeError(f"not a readable container: {_first_line(error)}") from error
        with container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # float planar, native layout and rate
            chunks: list[np.ndarray] = []
            sample_rate = stream.rate
            try:
                for frame in container.decode(stream):
                    for converted in resampler.resample(frame):
                        chunks.append(converted.to_ndarray().mean(axis=0))
                        sample_rate = converted.sample_rate
                for converted in resampler.resample(None):
                    chunks.append(converted.to_ndarray().mean(axis=0))
            except Exception as error:
                raise DecodeError(f"audio decoding failed: {_first_line(error)}") from error
    if not chunks:
        raise DecodeError("audio stream has no decodable samples")
    return np.concatenate(chunks).astype(np.float32), int(sample_rate)
