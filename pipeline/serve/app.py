"""The live-stream service: a Ray Serve application (FastAPI ingress + batched model replicas).

    app = build_application(ServeSettings(model="outputs/run"), token_sha256=digest)
    serve.start(http_options={"host": "127.0.0.1", "port": 8000})
    serve.run(app, name="crif", route_prefix="/")

or, on a cluster, ``serve deploy cluster/serve.yaml`` / ``serve run cluster/serve.yaml``
(``import_path: pipeline.serve.app:app_builder``; the YAML's ``args`` are ServeSettings
fields). API (every route needs ``Authorization: Bearer TOKEN``; DESIGN.md's contract):

    POST   /streams                      {"camera": ID, "url": URL[, "listen": true]} -> 201
    GET    /streams                      the streams and their state
    DELETE /streams/{camera}
    GET    /streams/{camera}/predictions ?after=WINDOW: the windows scored so far
    GET    /streams/{camera}/events      server-sent events, one per window (Last-Event-ID)
    GET    /status                       model, limits, per-stream and per-replica metrics

Each stream is one ingest actor (pipeline.serve.ingest: decode thread + scorer thread) that
calls the ``CRIFWindowModel`` replicas through a Serve handle; the replicas batch windows
across streams. The ingress holds the stream table (one replica: its state is the streams).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from ray import serve

from pipeline.common.configs import check_choices
from pipeline.extract.job import S3DExecution
from pipeline.serve.security import (
    MAX_PIXELS,
    TOKEN_ENV,
    UnsafeURL,
    authorized,
    check_camera,
    check_stream_url,
    is_loopback,
    read_token,
    redact_url,
    token_digest,
)

__all__ = ["ServeSettings", "StreamService", "app_builder", "build_application", "read_streams"]

logger = logging.getLogger(__name__)

INGRESS_CPUS = 0.1
SSE_WAIT_S = 10.0  # an events stream sends a keep-alive comment after this long without news


@dataclass(frozen=True)
class ServeSettings:
    """The live service; jobs/serve.py maps its flags 1:1 onto these fields (the field
    comments are the flags' help), a serve config's ``args`` set them by name."""

    model: str  # RUN_DIR, RUN_DIR/model, a Tune best/ dir, or a checkpoint directory
    host: str = "127.0.0.1"  # address the HTTP API binds to (0.0.0.0: every interface)
    port: int = 8000  # HTTP port of the API
    streams: str | None = None  # YAML/JSON file of streams to add at start: [{camera, url}]
    token_file: str | None = None  # file whose first line is the API token (else CRIF_SERVE_TOKEN)
    token_sha256: str | None = None  # sha256 hex of the token, instead of the token (serve deploy)
    insecure: bool = False  # serve without a token (only on a loopback host)
    max_streams: int = 16  # streams the service accepts at once
    hop: int | None = None  # sampled frames between window starts (default: half a window)
    max_pending: int = 1  # windows of a stream waiting for the model before one is dropped
    top_k: int = 5  # classes (with probabilities) listed per window
    max_batch_size: int = 8  # windows per model call, across streams
    batch_wait_s: float = 0.05  # seconds a model call waits for more windows
    model_replicas: int = 1  # model replicas (one GPU each when use_gpu)
    model_cpus: float | None = None  # CPUs per CPU model replica (default: 1, or half of 1 CPU)
    ingest_cpus: float | None = None  # CPUs per stream's ingest (default: sized from the cluster)
    use_gpu: bool | None = None  # model replicas on GPUs (default: when the cluster has them)
    s3d_execution: S3DExecution = "auto"  # how S3D runs (same features to 1e-6)
    s3d_weights: str | None = None  # a local S3D .pth when the model was trained on one
    open_timeout: float = 30.0  # seconds to open a stream (RTSP listen: to be published to)
    read_timeout: float = 10.0  # seconds without data before a stream counts as dropped
    keep_predictions: int = 1000  # windows kept per stream for GET .../predictions
    record_windows: str | None = None  # directory: each scored window's frames, lossless (audit)

    def __post_init__(self):
        check_choices(self)
        if self.max_streams < 1 or self.max_pending < 1 or self.model_replicas < 1:
            raise ValueError("max_streams, max_pending and model_replicas must be >= 1")
        if self.hop is not None and self.hop < 1:
            raise ValueError("hop must be >= 1")
        if self.insecure and not is_loopback(self.host):
            raise ValueError(f"--insecure serves only on a loopback host, not {self.host}")
        if not self.insecure and self.digest() is None:
            raise ValueError(
                f"no API token: set {TOKEN_ENV}, give --token-file (or token_sha256), "
                "or run --insecure on a loopback host"
            )

    def digest(self) -> str | None:
        """The token's sha256 (None: insecure); reads the token file or the environment."""
        if self.token_sha256:
            return self.token_sha256.lower()
        token = read_token(self.token_file)
        return None if token is None else token_digest(token)


class StreamRequest(BaseModel):
    camera: str
    url: str
    listen: bool = False  # RTSP: wait for the camera to publish to this URL


def _authorize(authorization: str | None = Header(default=None)) -> None:
    service = serve.get_replica_context().servable_object
    if not authorized(authorization, service.token_sha256):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


api = FastAPI(
    title="CRIF live streams",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,  # no unauthenticated schema
    dependencies=[Depends(_authorize)],
)


@serve.deployment(name="CRIFStreams", num_replicas=1, max_ongoing_requests=256)
@serve.ingress(api)
class StreamService:
    """The HTTP API and the stream table; one ingest actor per stream."""

    def __init__(self, model, settings: ServeSettings, token_sha256: str | None, plan: dict):
        self.model, self.settings, self.token_sha256 = model, settings, token_sha256
        self.plan = plan  # inputs, hop, ingest_cpus: from build_application
        self.streams: dict[str, dict] = {}
        for stream in plan.get("initial_streams", []):
            self._add(StreamRequest(**stream))

    # ---------------------------------------------------------------------------- streams

    def _add(self, request: StreamRequest) -> dict:
        import ray

        from pipeline.serve.ingest import IngestActor, IngestSettings

        try:
            camera = check_camera(request.camera)
            url = check_stream_url(request.url)
        except (ValueError, UnsafeURL) as error:
            raise HTTPException(400, str(error)) from error
        if camera in self.streams:
            raise HTTPException(409, f"camera {camera} is already streaming; DELETE it first")
        if len(self.streams) >= self.settings.max_streams:
            raise HTTPException(429, f"at most {self.settings.max_streams} streams")
        if request.listen and not url.lower().startswith(("rtsp://", "rtsps://")):
            raise HTTPException(400, "listen is for rtsp URLs only")
        settings = self.settings
        ingest = IngestSettings(
            inputs=self.plan["inputs"],
            hop=self.plan["hop"],
            max_pending=settings.max_pending,
            open_timeout=settings.open_timeout,
            read_timeout=settings.read_timeout,
            keep_predictions=settings.keep_predictions,
            record_dir=settings.record_windows,
            listen=request.listen,
        )
        actor = (
            ray.remote(IngestActor)
            .options(num_cpus=self.plan["ingest_cpus"], max_concurrency=32)
            .remote(camera, url, ingest, self.model)
        )
        self.streams[camera] = {"actor": actor, "url": url, "listen": request.listen}
        logger.info(f"[serve] added {camera}: {redact_url(url)}")
        return {"camera": camera, "url": redact_url(url), "listen": request.listen}

    def _actor(self, camera: str):
        if camera not in self.streams:
            raise HTTPException(404, f"no stream {camera}")
        return self.streams[camera]["actor"]

    async def _status(self, camera: str) -> dict:
        try:
            return await self._actor(camera).status.remote()
        except HTTPException:
            raise
        except Exception as error:  # noqa: BLE001 - a dead ingest is a state, not a 500
            entry = self.streams[camera]
            return {"camera": camera, "url": redact_url(entry["url"]), "state": "failed",
                    "last_error": f"ingest actor: {type(error).__name__}"}  # fmt: skip

    @api.post("/streams", status_code=201)
    async def add_stream(self, request: StreamRequest) -> dict:
        return self._add(request)

    @api.get("/streams")
    async def list_streams(self) -> dict:
        statuses = await asyncio.gather(*(self._status(camera) for camera in self.streams))
        return {"streams": list(statuses)}

    @api.delete("/streams/{camera}")
    async def remove_stream(self, camera: str) -> dict:
        import ray

        actor = self._actor(camera)
        del self.streams[camera]
        try:
            await asyncio.wait_for(actor.stop.remote(), timeout=5.0)
        except Exception:  # noqa: BLE001 - a stuck open (RTSP listen): the kill below ends it
            pass
        ray.kill(actor)
        return {"camera": camera, "removed": True}

    @api.get("/streams/{camera}/predictions")
    async def predictions(self, camera: str, after: int = -1) -> dict:
        found = await self._actor(camera).predictions.remote(after)
        return {"camera": camera, "predictions": found}

    @api.get("/streams/{camera}/events")
    async def events(
        self, camera: str, after: int = -1,
        last_event_id: str | None = Header(default=None),
    ) -> StreamingResponse:  # fmt: skip
        actor = self._actor(camera)
        if last_event_id is not None and last_event_id.strip().lstrip("-").isdigit():
            after = int(last_event_id)

        async def stream():
            position = after
            yield ": connected\n\n"
            while True:  # Starlette cancels this when the client goes away
                try:
                    found = await actor.wait.remote(position, SSE_WAIT_S)
                except Exception:  # noqa: BLE001 - the stream was removed
                    yield 'event: end\ndata: {"reason": "stream removed"}\n\n'
                    return
                if not found:
                    yield ": keep-alive\n\n"
                for prediction in found:
                    position = prediction["window"]
                    yield f"id: {position}\nevent: prediction\ndata: {json.dumps(prediction)}\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @api.get("/status")
    async def status(self) -> JSONResponse:
        statuses = await asyncio.gather(*(self._status(camera) for camera in self.streams))
        replicas: dict[str, dict] = {}
        for entry in statuses:
            for replica, numbers in entry.get("replicas", {}).items():
                total = replicas.setdefault(
                    replica, {"windows": 0, "batch_sizes": 0, "compute_s": 0}
                )
                for key in total:
                    total[key] += numbers[key]
        for numbers in replicas.values():
            windows = max(1, numbers["windows"])
            numbers["mean_batch_size"] = round(numbers.pop("batch_sizes") / windows, 3)
            numbers["mean_compute_s"] = round(numbers.pop("compute_s") / windows, 4)
        model = await self.model.describe.remote()
        settings = self.settings
        body = {
            "model": model,
            "window": {
                "clip_len": self.plan["inputs"].clip_len,
                "hop": self.plan["hop"],
                "fps": self.plan["inputs"].fps,
            },  # fmt: skip
            "limits": {
                "max_streams": settings.max_streams,
                "max_pixels": MAX_PIXELS,
                "max_pending": settings.max_pending,
            },  # fmt: skip
            "resources": {k: self.plan[k] for k in ("ingest_cpus", "model_cpus", "use_gpu")},
            "streams": list(statuses),
            "replicas": replicas,
        }
        return JSONResponse(body)


# -------------------------------------------------------------------------------- building


def read_streams(path: str | None) -> list[dict]:
    """The streams file: a YAML/JSON list of {camera, url[, listen]} (or {streams: [...]})."""
    if not path:
        return []
    import yaml

    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle) or []
    streams = document.get("streams", []) if isinstance(document, dict) else document
    for stream in streams:
        check_camera(stream.get("camera"))
        check_stream_url(stream.get("url"))
    return [dict(stream) for stream in streams]


def _plan(settings: ServeSettings) -> dict:
    """Window inputs and resources, sized from the running cluster."""
    import ray

    from feature_extractors import S3DExtractor, config_from_dict
    from pipeline.artifact import read_checkpoint_info, resolve_model_dir
    from pipeline.score.batch import visual_description

    info = read_checkpoint_info(resolve_model_dir(settings.model))
    description = visual_description(info, settings.s3d_weights)  # refuses another set-up
    from pipeline.serve.ingest import WindowInputs

    config = config_from_dict(S3DExtractor, description["config"])
    inputs = WindowInputs.of(S3DExtractor.inputs(config))
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 1.0)
    use_gpu = resources.get("GPU", 0) > 0 if settings.use_gpu is None else settings.use_gpu
    model_cpus = settings.model_cpus or (1.0 if cpus >= 2 or use_gpu else 0.5)
    spare = cpus - INGRESS_CPUS - (0 if use_gpu else model_cpus * settings.model_replicas)
    ingest_cpus = settings.ingest_cpus or round(
        max(0.01, min(0.5, spare / settings.max_streams)), 3
    )
    return {
        "inputs": inputs,
        "hop": settings.hop or max(1, inputs.clip_len // 2),
        "ingest_cpus": ingest_cpus,
        "model_cpus": model_cpus,
        "use_gpu": use_gpu,
        "initial_streams": read_streams(settings.streams),
    }


def build_application(settings: ServeSettings, token_sha256: str | None = None):
    """The bound Serve application (ingress + model); Ray must be running."""
    from pipeline.serve.model import ModelSettings, WindowModel

    plan = _plan(settings)
    model_settings = ModelSettings(
        top_k=settings.top_k,
        s3d_weights=settings.s3d_weights,
        execution=settings.s3d_execution,
        max_batch_size=settings.max_batch_size,
        batch_wait_s=settings.batch_wait_s,
        use_gpu=plan["use_gpu"],
    )
    actor_options = {"num_cpus": plan["model_cpus"]}
    if plan["use_gpu"]:
        actor_options["num_gpus"] = 1
    model = WindowModel.options(
        num_replicas=settings.model_replicas, ray_actor_options=actor_options
    ).bind(settings.model, model_settings)
    ingress = StreamService.options(ray_actor_options={"num_cpus": INGRESS_CPUS})
    digest = token_sha256 if token_sha256 is not None else settings.digest()
    return ingress.bind(model, settings, digest, plan)


def app_builder(args: dict):
    """``serve run``/``serve deploy`` entry (``import_path: pipeline.serve.app:app_builder``):
    ``args`` are ServeSettings fields; the token comes from token_file, token_sha256 or
    CRIF_SERVE_TOKEN where the application is built. host/port are the config's
    http_options, not args."""
    settings = ServeSettings(**args)
    return build_application(settings)
