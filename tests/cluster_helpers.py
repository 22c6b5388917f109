"""Start and stop a token-authenticated local Ray head for tests, and talk to it with the CLI.

The head is a real ``ray start --head --block`` process started from this virtual
environment, so the ``python`` a submitted job's entrypoint resolves is the venv's::

    head = start_head(REPO_ROOT, token=generate_token())
    try:
        listing = ["job", "list", "--address", head.dashboard_url]
        result = run_ray_cli(listing, head.client_environment())
    finally:
        stop_head(head)

Isolation from other Ray instances on the same machine:

- every port is picked free at run time and the dashboard binds to 127.0.0.1;
- the head gets its own ``--temp-dir``, so its address file (``ray_current_cluster``,
  written to ``<temp dir>/ray_current_cluster``) never overwrites ``/tmp/ray``'s;
- ``stop_head`` kills only the processes this head started (its session and its
  descendants, found by process id), never ``ray stop``, then removes the temp dir.

Ray's GCS and raylet gRPC servers listen on every interface whatever ``--node-ip-address``
says (and Ray resolves 127.0.0.1 to the machine's routable IP); token authentication is
what guards them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ADDRESS_FILE_NAME",
    "HEAD_START_TIMEOUT_SECONDS",
    "UPLOAD_EXCLUDES",
    "HeadNode",
    "find_free_ports",
    "generate_token",
    "kill_process_tree",
    "process_tree",
    "run_ray_cli",
    "runtime_env_json",
    "start_head",
    "stop_head",
    "venv_bin_dir",
]

ADDRESS_FILE_NAME = "ray_current_cluster"
HEAD_START_TIMEOUT_SECONDS = 90.0
# Kept out of the working-dir upload (which also honours .gitignore and .rayignore).
UPLOAD_EXCLUDES = [".venv", ".git", "outputs", "*.egg-info", "__pycache__", ".pytest_cache"]
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)
# Variables that would make a CLI or the head pick up another cluster or another token.
_INHERITED_RAY_VARIABLES = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH")


@dataclass(frozen=True)
class HeadNode:
    """A running head started by ``start_head``."""

    process: subprocess.Popen
    temp_dir: Path
    ports: dict[str, int]
    token: str
    log_path: Path
    environment: dict[str, str] = field(repr=False)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"

    @property
    def gcs_port(self) -> int:
        return self.ports["--port"]

    @property
    def address_file(self) -> Path:
        return self.temp_dir / ADDRESS_FILE_NAME

    def client_environment(self, token: str | None = None) -> dict[str, str]:
        """Environment for a CLI client: token auth on, with ``token`` (default: the head's)."""
        environment = dict(self.environment)
        environment["RAY_AUTH_MODE"] = "token"
        environment["RAY_AUTH_TOKEN"] = self.token if token is None else token
        return environment

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


def generate_token() -> str:
    """A fresh 256-bit token, the same form ``ray get-auth-token --generate`` writes."""
    return secrets.token_hex(32)


def venv_bin_dir() -> Path:
    """The ``bin`` directory of the interpreter running the tests (the project's venv)."""
    return Path(sys.executable).parent


def find_free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _base_environment() -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if key not in _INHERITED_RAY_VARIABLES
    }
    # Activating the venv for the head: the entrypoint's `python` resolves on the head's PATH.
    environment["PATH"] = f"{venv_bin_dir()}{os.pathsep}{environment.get('PATH', '')}"
    environment["VIRTUAL_ENV"] = sys.prefix
    environment["RAY_USAGE_STATS_ENABLED"] = "0"
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def _head_command(num_cpus: int, ports: dict[str, int], temp_dir: Path) -> list[str]:
    command = [
        str(venv_bin_dir() / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus",
        str(num_cpus),
        "--num-gpus",
        "0",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    for flag, port in ports.items():
        command += [flag, str(port)]
    return command


def start_head(
    working_directory: Path,
    token: str,
    num_cpus: int = 2,
    timeout: float = HEAD_START_TIMEOUT_SECONDS,
) -> HeadNode:
    """Start a head with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN=token``; wait until it serves.

    Raises ``RuntimeError`` (with the head's log) when it does not come up within ``timeout``;
    whatever it started is stopped first.
    """
    # Short path: Ray puts unix sockets under the temp dir (107-character limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="crif-ray-", dir="/tmp"))
    ports = dict(zip(_PORT_FLAGS, find_free_ports(len(_PORT_FLAGS)), strict=True))
    environment = _base_environment()
    head_environment = dict(environment, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    log_path = temp_dir / "head.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            _head_command(num_cpus, ports, temp_dir),
            cwd=working_directory,
            env=head_environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head = HeadNode(process, temp_dir, ports, token, log_path, environment)
    try:
        _wait_until_serving(head, timeout)
    except BaseException:
        stop_head(head)
        raise
    return head


def _dashboard_status(head: HeadNode) -> int | None:
    request = urllib.request.Request(
        f"{head.dashboard_url}/api/version", headers={"Authorization": f"Bearer {head.token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def _wait_until_serving(head: HeadNode, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RuntimeError(
                f"ray start exited with {head.process.returncode}:\n{head.log_tail()}"
            )
        if _dashboard_status(head) == 200 and head.address_file.exists():
            return
        time.sleep(0.5)
    raise RuntimeError(f"the head did not serve within {timeout:.0f} s:\n{head.log_tail()}")


def _process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, session id)}`` for every process, read from /proc (Linux)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state ppid pgrp session ...
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def process_tree(leader: int) -> set[int]:
    """``leader``, its session (it was started with ``start_new_session``) and every
    descendant (Ray job drivers and their watchers run in sessions of their own)."""
    table = _process_table()
    started = {leader} | {pid for pid, (_, session) in table.items() if session == leader}
    grew = True
    while grew:
        descendants = {pid for pid, (parent, _) in table.items() if parent in started}
        grew = not descendants <= started
        started |= descendants
    return started


def kill_process_tree(leader: int, sweeps: int = 3) -> None:
    """SIGKILL ``process_tree(leader)``; repeated sweeps catch processes forked meanwhile."""
    for _ in range(sweeps):
        for process_id in process_tree(leader):
            try:
                os.kill(process_id, signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.2)


def _remove_default_address_file(head: HeadNode) -> None:
    # Only if some code path wrote this head's address into the shared default file.
    from ray._common.utils import get_ray_address_file

    default_file = Path(get_ray_address_file(None))
    try:
        if default_file.read_text().strip().endswith(f":{head.gcs_port}"):
            default_file.unlink()
    except OSError:
        pass


def stop_head(head: HeadNode) -> None:
    """Kill what ``head`` started (never ``ray stop``), remove its address file and temp dir.

    SIGKILL straight away: on SIGTERM a ``--block`` head drains for up to 30 s.
    """
    kill_process_tree(head.process.pid)
    try:
        head.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    head.address_file.unlink(missing_ok=True)
    _remove_default_address_file(head)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


def run_ray_cli(
    arguments: Sequence[str],
    environment: dict[str, str],
    working_directory: Path | None = None,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess:
    """Run the venv's ``ray`` CLI and capture its output as text."""
    return subprocess.run(
        [str(venv_bin_dir() / "ray"), *arguments],
        cwd=working_directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def runtime_env_json(extra: dict | None = None) -> str:
    """``--runtime-env-json`` value with the upload excludes (plus ``extra`` keys)."""
    return json.dumps({"excludes": UPLOAD_EXCLUDES, **(extra or {})})
