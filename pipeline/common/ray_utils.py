"""Connecting to Ray the same way from every job (and giving the job its console).

    init_ray()                                   # a new local Ray, or RAY_ADDRESS's cluster
    init_ray("ray://head:10001")                 # join a cluster (checked first: see below)
    init_ray(address, shared_paths=[config.out]) # and refuse an --out other nodes cannot see

Before joining an existing cluster, :func:`init_ray` runs the cheap checks of
:mod:`pipeline.common.cluster_checks` (``check_before_init``: a TCP connect with a 5 s
timeout, plus the token for a dashboard URL), so a dead address or a wrong token is one
clear error instead of a minute of retries. ``shared_paths`` are checked once connected
(``check_shared_storage``: on a multi-host cluster a local path must be on a network
filesystem). A new local instance needs no check.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pipeline.common.cluster_checks import check_before_init, check_shared_storage
from pipeline.common.logs import ensure_logging

__all__ = ["init_ray"]


def init_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    shared_paths: Iterable[str] = (),
    **kwargs,
):
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
    else:
        check_before_init(address)  # fails fast: unreachable head, refused token
    options.setdefault("log_to_driver", True)
    context = ray.init(address=address, **options)
    for path in shared_paths:
        check_shared_storage(str(path))
    return context
