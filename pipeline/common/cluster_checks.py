"""Fail fast and clearly before a job commits to a cluster.

Each check raises a ``ClusterCheckError`` subclass whose message says what is wrong and
what to do; none of them hangs:

- ``check_reachable(address)``: something listens at the address. A TCP connect with
  ``timeout`` seconds (default ``CONNECT_TIMEOUT_SECONDS`` = 5 s). Without it,
  ``ray.init(address=...)`` on a dead address retries for a minute or more, and a
  blackholed address (a closed SSH tunnel, a firewalled port) can hang a bare HTTP client.
- ``check_token(dashboard_url)``: the dashboard accepts our token (HTTP 200 on
  ``/api/version``; 401 = no token sent, 403 = wrong token). Through the GCS port a wrong
  token only surfaces from ``ray.init`` after ~20 s, so check on the dashboard URL.
- ``check_shared_storage(path)``: a storage path is usable by every node. URIs (s3://,
  gs://, ...) always are; a local path is only on a single-host cluster or on a network
  filesystem (NFS, EFS, Filestore, Lustre, ...).
- ``check_gpus(requested)``: the cluster has the GPUs a job asks for.

``check_before_init(address)`` is what every job runs before ``ray.init``: the jobs
connect through :func:`pipeline.common.ray_utils.init_ray`, which calls it before joining a
cluster. It checks reachability of ``address`` or ``RAY_ADDRESS`` (nothing for a new local
instance), and the token too when the address is a dashboard URL. ``init_ray(...,
shared_paths=[out])`` runs ``check_shared_storage`` on each path once connected;
``check_gpus`` is for code that is about to ask for GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "CONNECT_TIMEOUT_SECONDS",
    "NETWORK_FILESYSTEMS",
    "SHARED_URI_SCHEMES",
    "AuthenticationFailedError",
    "ClusterCheckError",
    "ClusterUnreachableError",
    "GpuUnavailableError",
    "StorageNotSharedError",
    "check_before_init",
    "check_gpus",
    "check_reachable",
    "check_shared_storage",
    "check_token",
    "cluster_node_hosts",
    "filesystem_type",
    "parse_address",
    "resolve_token",
]

CONNECT_TIMEOUT_SECONDS = 5.0
SHARED_URI_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs")
NETWORK_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "lustre",
    "gpfs",
    "beegfs",
    "glusterfs",
    "ceph",
    "fuse.gcsfuse",
    "fuse.s3fs",
    "fuse.mountpoint-s3",
    "fuse.juicefs",
)
_LOCAL_ADDRESSES = ("", "local", "auto")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 10001}


class ClusterCheckError(RuntimeError):
    """A cluster is not usable as configured; the message says why and what to do."""


class ClusterUnreachableError(ClusterCheckError):
    """Nothing answers at the given address within the timeout."""


class AuthenticationFailedError(ClusterCheckError):
    """The cluster refused the token (or none was sent)."""


class StorageNotSharedError(ClusterCheckError):
    """A storage path would not be seen by every node of the cluster."""


class GpuUnavailableError(ClusterCheckError):
    """More GPUs were requested than the cluster has."""


# ---------------------------------------------------------------------------- addresses


def parse_address(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a Ray address.

    ``http(s)://host:port`` is a dashboard (job submission) URL, ``ray://host:port`` a Ray
    Client address, and a bare ``host:port`` a GCS address (port 6379 when omitted).
    """
    if "://" not in address:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "6379")
        return "gcs", host, int(port)
    parts = urlsplit(address)
    if not parts.hostname:
        raise ValueError(f"no host in Ray address {address!r}")
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Raise ``ClusterUnreachableError`` unless a TCP connect to ``address`` succeeds in time."""
    scheme, host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except OSError as error:
        reason = error.strerror or str(error)
    raise ClusterUnreachableError(
        f"Ray cluster unreachable at {address} ({scheme} port {host}:{port}): {reason}. "
        "Is the head running (`ray start --head`, `ray up`, or the RayCluster pod), and is "
        "the SSH tunnel or `kubectl port-forward` open? See cluster/README.md."
    )


# ---------------------------------------------------------------------------- token


def resolve_token(token: str | None = None) -> str | None:
    """The token a Ray client would send: ``token``, ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``'s file, then ``~/.ray/auth_token`` (Ray's own precedence)."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError:
        return None


def _http_get(url: str, token: str | None, timeout: float) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        raise ClusterUnreachableError(
            f"Ray dashboard unreachable at {url}: {error}. Is the head running and the "
            "tunnel or port-forward open? See cluster/README.md."
        ) from None


def _authentication_mode(dashboard_url: str, timeout: float) -> str:
    status, body = _http_get(f"{dashboard_url}/api/authentication_mode", None, timeout)
    if status != 200:
        return "unknown"
    return json.loads(body).get("authentication_mode", "unknown")


def check_token(
    dashboard_url: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_SECONDS
) -> str:
    """Raise ``AuthenticationFailedError`` unless the dashboard accepts the token.

    Returns the cluster's authentication mode (``token`` or ``disabled``).
    """
    dashboard_url = dashboard_url.rstrip("/")
    mode = _authentication_mode(dashboard_url, timeout)
    token = resolve_token(token)
    status, body = _http_get(f"{dashboard_url}/api/version", token, timeout)
    if status == 200:
        return mode
    if status == 401:
        raise AuthenticationFailedError(
            f"{dashboard_url} requires a token and none was sent ({body.strip()}). Set "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
            "cluster's token; see cluster/README.md#security."
        )
    if status == 403:
        raise AuthenticationFailedError(
            f"{dashboard_url} refused the token ({body.strip()}): it is not this cluster's "
            "token. Fetch it again (`ray get-auth-token` on the head, or the Kubernetes "
            "Secret) and set RAY_AUTH_TOKEN."
        )
    raise ClusterCheckError(f"{dashboard_url}/api/version answered HTTP {status}: {body[:200]}")


def check_before_init(address: str | None = None, timeout: float = CONNECT_TIMEOUT_SECONDS):
    """Checks a job runs before ``ray.init``; nothing to check for a new local instance."""
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address in _LOCAL_ADDRESSES:
        return
    check_reachable(address, timeout)
    if parse_address(address)[0] in ("http", "https"):
        check_token(address, timeout=timeout)


# ---------------------------------------------------------------------------- storage


def filesystem_type(path: str | os.PathLike, mounts_file: str = "/proc/mounts") -> str:
    """The type of the filesystem holding ``path`` (longest matching mount point)."""
    target = os.path.realpath(path)
    best_mount, best_type = "", "unknown"
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return best_type
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best_mount):
            best_mount, best_type = mount_point, fields[2]
    return best_type


def cluster_node_hosts() -> list[str]:
    """Distinct hosts of the alive nodes of the connected cluster (``[]`` without Ray)."""
    import ray

    if not ray.is_initialized():
        return []
    hosts = {
        node.get("NodeManagerHostname") or node.get("NodeManagerAddress")
        for node in ray.nodes()
        if node.get("Alive")
    }
    return sorted(host for host in hosts if host)


def check_shared_storage(
    path: str,
    node_hosts: Iterable[str] | None = None,
    mounts_file: str = "/proc/mounts",
) -> None:
    """Raise ``StorageNotSharedError`` if ``path`` is local to one machine of a multi-host cluster.

    ``node_hosts`` defaults to the hosts of the connected cluster (``cluster_node_hosts``).
    Several Ray nodes on one machine share its disk, so only distinct hosts count.
    """
    scheme = urlsplit(str(path)).scheme.lower()
    if scheme in SHARED_URI_SCHEMES:
        return
    if scheme not in ("", "file") and len(scheme) > 1:  # len 1: a Windows drive letter
        raise StorageNotSharedError(f"unknown storage scheme {scheme!r} in {path!r}")
    hosts = sorted(set(cluster_node_hosts() if node_hosts is None else node_hosts))
    if len(hosts) <= 1:
        return
    local_path = urlsplit(str(path)).path if scheme == "file" else str(path)
    kind = filesystem_type(local_path, mounts_file)
    if kind in NETWORK_FILESYSTEMS:
        return
    raise StorageNotSharedError(
        f"{path!r} is on a local {kind} filesystem, but the cluster spans {len(hosts)} "
        f"hosts ({', '.join(hosts[:4])}{', ...' if len(hosts) > 4 else ''}): other nodes "
        "would write features, checkpoints or Tune results where no one else can read "
        "them. Use s3://, gs:// or a path on the shared NFS mount (/mnt/crif on the "
        "configs in cluster/)."
    )


# ---------------------------------------------------------------------------- GPUs


def check_gpus(requested: float, resources: Mapping[str, float] | None = None) -> float:
    """Raise ``GpuUnavailableError`` if the cluster has fewer than ``requested`` GPUs.

    ``resources`` defaults to ``ray.cluster_resources()`` (Ray must be initialised). An
    autoscaling GPU group at zero nodes shows no GPUs yet: start it with ``min_workers: 1``
    or request resources first (``ray.autoscaler.sdk.request_resources``). Returns the
    number of GPUs the cluster has.
    """
    if resources is None:
        import ray

        resources = ray.cluster_resources()
    available = float(resources.get("GPU", 0.0))
    if requested <= 0 or requested <= available:
        return available
    raise GpuUnavailableError(
        f"{requested:g} GPU(s) requested but the cluster has {available:g}. Run on CPU "
        "(--no-use-gpu), lower the request, or add GPU nodes (the gpu worker group in "
        "cluster/aws.yaml, cluster/gcp.yaml or the KubeRay manifests)."
    )
