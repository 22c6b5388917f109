"""The live service's Prometheus metrics, through Ray's metrics agent (``ray.util.metrics``).

    metrics = StreamMetrics("cam1")      # inside a Ray worker (an ingest actor)
    metrics.scored(latency_s); metrics.dropped(); metrics.reconnected(); metrics.state("streaming")

Ray exports them on each node's metrics port (``ray start --metrics-export-port``; the
dashboard's Prometheus config finds them) with the ``ray_`` prefix, e.g.
``ray_crif_serve_window_latency_seconds_bucket{camera="cam1"}``. The model replicas' own
metrics (``ray_crif_serve_replica_*``, tagged with Serve's deployment and replica) are
:class:`ReplicaMetrics`. The same numbers, as p50/p95 and rates, are in ``GET /status``.
"""

from __future__ import annotations

from pipeline.serve.ingest import STATES

__all__ = ["LATENCY_BOUNDARIES", "ReplicaMetrics", "StreamMetrics"]

# Seconds from a window's end to its prediction.
LATENCY_BOUNDARIES = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]


class StreamMetrics:
    """Per-camera counters and the latency histogram (tag ``camera``)."""

    _shared: dict | None = None

    def __init__(self, camera: str):
        from ray.util import metrics

        if StreamMetrics._shared is None:  # one set of metric objects per process
            keys = ("camera",)
            StreamMetrics._shared = {
                "windows": metrics.Counter(
                    "crif_serve_windows_scored", "windows scored", tag_keys=keys
                ),
                "dropped": metrics.Counter(
                    "crif_serve_windows_dropped", "windows dropped: model behind", tag_keys=keys
                ),
                "reconnects": metrics.Counter(
                    "crif_serve_reconnects", "stream reconnects", tag_keys=keys
                ),
                "latency": metrics.Histogram(
                    "crif_serve_window_latency_seconds",
                    "seconds from a window's end to its prediction",
                    boundaries=LATENCY_BOUNDARIES,
                    tag_keys=keys,
                ),
                "state": metrics.Gauge(
                    "crif_serve_stream_state",
                    f"stream state as an index of {list(STATES)}",
                    tag_keys=keys,
                ),
            }
        self.tags = {"camera": camera}
        self.metrics = StreamMetrics._shared

    def scored(self, latency: float) -> None:
        self.metrics["windows"].inc(1, tags=self.tags)
        self.metrics["latency"].observe(latency, tags=self.tags)

    def dropped(self) -> None:
        self.metrics["dropped"].inc(1, tags=self.tags)

    def reconnected(self) -> None:
        self.metrics["reconnects"].inc(1, tags=self.tags)

    def state(self, name: str) -> None:
        self.metrics["state"].set(STATES.index(name), tags=self.tags)


class ReplicaMetrics:
    """Per-replica windows, batch sizes and compute time (Serve adds the replica tags)."""

    def __init__(self):
        from ray.serve import metrics

        self.windows = metrics.Counter("crif_serve_replica_windows", "windows scored")
        self.batch = metrics.Histogram(
            "crif_serve_replica_batch_size", "windows per model call", boundaries=BATCH_BOUNDARIES
        )
        self.compute = metrics.Histogram(
            "crif_serve_replica_compute_seconds",
            "seconds of one batched model call (S3D + CRIF)",
            boundaries=LATENCY_BOUNDARIES,
        )

    def batch_done(self, size: int, seconds: float) -> None:
        self.windows.inc(size)
        self.batch.observe(size)
        self.compute.observe(seconds)
