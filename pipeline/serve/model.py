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
import concurrent.futures
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
        # Every model call runs on this one thread (torch's thread settings are per thread),
        # warmed up here so that the first window does not pay for oneDNN's set-up.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        inputs = self.extractor.extractor.config
        blank = np.zeros((inputs.clip_len, inputs.crop, inputs.crop, 3), np.uint8)
        self.executor.submit(self._compute, [blank]).result()

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
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        table = await loop.run_in_executor(self.executor, self._compute, clips)
        seconds = time.perf_counter() - started
        self.metrics.batch_done(len(clips), seconds)
        return [self._answer(row, len(clips), seconds) for row in table.to_pylist()]

    def _compute(self, clips: list[np.ndarray]) -> pa.Table:
        """uint8 clips -> the CRIF head's table (top-k, probabilities), one row per clip."""
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
        return table

    def _answer(self, row: dict, batch_size: int, seconds: float) -> dict:
        return {
            "top_k": [
                {"label": label, "probability": probability}
                for label, probability in zip(
                    row["top_k_labels"], row["top_k_probabilities"], strict=True
                )
            ],
            "probabilities": row["probabilities"],
            "model_id": self.identifier,
            "replica": self.replica,
            "batch_size": batch_size,
            "compute_s": round(seconds, 4),
        }
