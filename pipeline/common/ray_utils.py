"""Connecting to Ray the same way from every job (and giving the job its console).

init_ray()                       # a new local Ray, or RAY_ADDRESS's cluster
init_ray("ray://head:10001")     # join a cluster
"""

from __future__ import annotations

import os

from pipeline.common.logs import ensure_logging

__all__ = ["init_ray"]


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Start or join Ray.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster; without either a new
    local instance is started. A bare ``ray.init()`` would silently attach to whatever
    head last ran on this machine, even a killed one that left its address file behind.
    Under ``ray job submit`` the driver already has ``RAY_ADDRESS`` set and joins the cluster.
    """
    import ray

    ensure_logging()  # the job's console: the pipeline's INFO lines, unless already set up
    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    options = dict(kwargs)
    if address == "local":
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        options.setdefault("include_dashboard", False)
    options.setdefault("log_to_driver", True)
    return ray.init(address=address, **options)
