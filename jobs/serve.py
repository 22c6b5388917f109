r"""Serve a trained CRIF model on live camera streams: predictions window by window (Ray Serve).

    export CRIF_SERVE_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    python jobs/serve.py --model outputs/run                   # http://127.0.0.1:8000
    python jobs/serve.py --model outputs/run --streams cameras.yaml --port 8080
    curl -H "Authorization: Bearer $CRIF_SERVE_TOKEN" -d '{"camera": "door", \
        "url": "rtsp://10.0.0.5/stream1"}' -H 'Content-Type: application/json' \
        http://127.0.0.1:8000/streams
    curl -N -H "Authorization: Bearer $CRIF_SERVE_TOKEN" http://127.0.0.1:8000/streams/door/events

The API needs the bearer token from CRIF_SERVE_TOKEN or --token-file; without one the
service does not start (unless --insecure, on a loopback host only). It binds 127.0.0.1
unless --host says otherwise. On a cluster: `serve deploy cluster/serve.yaml`. Runs until
Ctrl-C, then shuts Serve down.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeline.common import cli
from pipeline.serve.app import ServeSettings


def build_parser() -> argparse.ArgumentParser:
    return cli.config_parser(ServeSettings, __doc__, skip=("token_sha256",))


def run(settings: ServeSettings, args: argparse.Namespace) -> str:
    from ray import serve

    from pipeline.serve.app import build_application

    application = build_application(settings)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application, name="crif", route_prefix="/")
    print(f"serving http://{settings.host}:{settings.port} (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return "stopped"


def main(argv: list[str] | None = None) -> int:
    return cli.run_job(run, build_parser(), ServeSettings, argv)


if __name__ == "__main__":
    sys.exit(main())
