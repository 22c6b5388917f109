"""Live camera streams scored window by window with Ray Serve (jobs/serve.py).

    security.py  the bearer token, the stream-URL policy, the limits
    ingest.py    one stream: decode, resample to the S3D rate, sliding windows, drops, reconnects
    model.py     the model replicas: @serve.batch across streams, S3D + the CRIF visual path
    app.py       the FastAPI ingress (the HTTP API, SSE events, status) and the app builder
    metrics.py   Prometheus metrics through ray.util.metrics

Modules are imported by name (``from pipeline.serve.app import build_application``): this
package imports nothing itself, so the URL policy loads without Ray Serve.
"""
