"""The model replicas of the live service: windows of many streams, batched, -> predictions.

    handle = serve.run(WindowModel.bind(model_dir, settings))      # or inside the app
    answer = handle.score.remote(clip).result()   # clip: uint8 (clip_len, crop, crop, 3)
    answer["probabilities"], answer["top_k"]      # [{"label", "probability"}, ...]

``score`` is a ``@serve.batch`` method: the windows that arrive within ``batch_wait_s`` (from
any stream) go through S3D in one call and through the CRIF visual path together. Both are
the batch job's own objects: S3D is the extraction job's :class:`ExtractorActor` built from
the checkpoint's recorded set-up (checked by :func:`visual_description`, as jobs/score.py
does), and the CRIF head is jobs/score.py's :class:`CRIFScorer` on one-clip sequences, so a
window's probabilities are those of scoring a video made of the window's frames. On a GPU
replica both run on ``cuda`` (S3D under the batch job's bf16 autocast).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from ray import serve

from pipeline.artifact import model_id, read_checkpoint_info, resolve_model_dir
from pipeline.score.batch import CRIFScorer, visual_description

__all__ = ["ModelSettings", "WindowModel"]


@dataclass(frozen=True)
class ModelSettings:
    top_k: int = 5
    s3d_weights: str | None = None  # a local S3D .pth when the model was trained on one
    execution: str = "auto"  # S3D execution mode (eager, channels_last, compile, auto)
    max_batch_size: int = 8  # windows per model call
    batch_wait_s: float = 0.05  # how long a call waits for more windows
    use_gpu: bool = False
    threads: int | None = None  # torch threads on CPU (default: every core of the replica)


@serve.deployment(name="CRIFWindowModel", max_ongoing_requests=64)
class WindowModel:
    """S3D + the CRIF visual path of one checkpoint, batched across streams."""

    def __init__(self, model: str, settings: ModelSettings):
        from feature_extractors import get_extractor
        from pipeline.extract.workers import ExtractorActor
        from pipeline.serve.metrics import ReplicaMetrics

        model_dir = resolve_model_dir(model)
        info = read_checkpoint_info(model_dir)
        description = visual_description(info, settings.s3d_weights)
        device = "cuda" if settings.use_gpu else "cpu"
        self.extractor = ExtractorActor(
            get_extractor(description["extractor"]),
            description["config"],
            device,
            threads=settings.threads,
            options={"execution": settings.execution},
        )
        self.identifier = model_id(model_dir)
        self.head = CRIFScorer(str(model_dir), settings.top_k, self.identifier, device)
        self.score.set_max_batch_size(settings.max_batch_size)
        self.score.set_batch_wait_timeout_s(settings.batch_wait_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = ReplicaMetrics()
        self.description = description

    def describe(self) -> dict:
        """The model id, its S3D set-up and classes (for GET /status)."""
        return {
            "model_id": self.identifier,
            "visual": self.description,
            "class_names": self.head.class_names,
            "task": self.head.task,
            "execution": self.extractor.extractor.execution,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def score(self, clips: list[np.ndarray]) -> list[dict]:
        # The model call blocks: off the replica's event loop, so health checks go on.
        return await asyncio.get_running_loop().run_in_executor(None, self._score, clips)

    def _score(self, clips: list[np.ndarray]) -> list[dict]:
        started = time.perf_counter()
        frames = np.stack(clips)  # (N, clip_len, crop, crop, 3) uint8
        batch = self.extractor({"frames": frames, "error": np.array([""] * len(clips))})
        features = batch["feature"]  # (N, 1024) float32: one clip, one feature per window
        table = self.head(
            pa.table(
                {
                    "video_id": [str(index) for index in range(len(clips))],
                    "visual": pa.array(
                        [[row] for row in features.tolist()], pa.list_(pa.list_(pa.float32()))
                    ),
                }
            )
        )
        seconds = time.perf_counter() - started
        self.metrics.batch_done(len(clips), seconds)
        answers = []
        for row in table.to_pylist():
            answers.append(
                {
                    "top_k": [
                        {"label": label, "probability": probability}
                        for label, probability in zip(
                            row["top_k_labels"], row["top_k_probabilities"], strict=True
                        )
                    ],
                    "probabilities": row["probabilities"],
                    "model_id": self.identifier,
                    "replica": self.replica,
                    "batch_size": len(clips),
                    "compute_s": round(seconds, 4),
                }
            )
        return answers
