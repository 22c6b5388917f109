"""What every benchmark shares: the machine record, timing, tables, JSON, process trees.

Machines here are shared and noisy, so a benchmark compares variants side by side in one run,
interleaved and repeated (`interleaved`), and reports ratios of medians; every result records
the load average before and after.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "outputs" / "benchmarks"
SHARED_VIDEOS = REPO.parent / "shared" / "data" / "videos"

__all__ = [
    "DEFAULT_OUT",
    "REPO",
    "SHARED_VIDEOS",
    "base_parser",
    "interleaved",
    "machine_info",
    "matmul_gflops",
    "matmul_rates",
    "median",
    "print_table",
    "run_process",
    "s3d_flops_per_clip",
    "write_result",
]


def base_parser(description: str):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="directory for the JSON result")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks it runs")
    return parser


def machine_info() -> dict:
    """CPU, cores, memory, load and library versions: the context of every number."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory,
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(variants: dict[str, Callable[[], float | None]], repeats: int) -> dict:
    """Run each variant `repeats` times in rotating order (A B C, B C A, ...).

    A variant returns its own measured seconds, or None to be timed as a whole call.
    Returns {name: [seconds per repeat]}.
    """
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            measured = variants[name]()
            times[name].append(time.perf_counter() - started if measured is None else measured)
    return times


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A plain fixed-width table on stdout."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    widths = [max([len(name)] + [len(cell(row.get(name))) for row in rows]) for name in columns]
    print(f"\n{title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        values = [cell(row.get(column)) for column in columns]
        print("  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)))


def write_result(out: str | Path, name: str, payload: dict) -> Path:
    """out/<name>.json with the machine record added; returns the path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    document = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")
    return path


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class _TreeMemory(threading.Thread):
    """Samples the summed PSS (proportional set size) of a process and all its descendants.

    PSS splits shared pages (the Ray object store, shared libraries) between the processes that
    map them, so the sum over a process tree counts each page once.
    """

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        self.breakdown: dict[str, float] = {}  # MiB per process name at the peak
        while not self.stopped.is_set():
            sizes = {pid: _pss_bytes(pid) for pid in _descendants(self.pid)}
            total = sum(sizes.values())
            if total > self.peak:
                self.peak, self.breakdown = total, {}
                for pid, size in sizes.items():
                    name = _process_name(pid)
                    self.breakdown[name] = round(self.breakdown.get(name, 0) + size / 2**20, 1)
            self.stopped.wait(self.interval)


def _process_name(pid: int) -> str:
    """Ray's process title (ray::S3DFeatures...) or the command's first words."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(word.decode(errors="replace") for word in words if word)
    if text.startswith("ray::"):
        return text.split("(")[0].split()[0][:60]
    return " ".join(Path(word).name for word in text.split()[:2])[:60]


def run_process(
    command: list[str], env: dict | None = None, memory: bool = False, timeout: float = 7200
) -> dict:
    """Run a whole process (start-up included) to its exit: seconds, exit code, output tail,
    and with `memory` the peak summed PSS of its process tree in MiB.

    The child gets its own session and process group so nothing it starts outlives it.
    """
    # A loaded shared machine can take longer than Ray's default 30 s to register a raylet.
    environment = {"RAY_raylet_start_wait_time_s": "120", **os.environ, **(env or {})}
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sampler = _TreeMemory(process.pid) if memory else None
    if sampler:
        sampler.start()
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
    seconds = time.perf_counter() - started
    if sampler:
        sampler.stopped.set()
        sampler.join()
    result = {"seconds": seconds, "returncode": process.returncode, "output": output[-4000:]}
    if sampler:
        result["peak_pss_mib"] = round(sampler.peak / 2**20, 1)
        result["peak_breakdown_mib"] = dict(
            sorted(sampler.breakdown.items(), key=lambda item: -item[1])
        )
    if process.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise RuntimeError(f"{' '.join(command[:4])}... exited with {process.returncode}")
    return result


# Shared measurements --------------------------------------------------------------------------


def matmul_gflops(size: int = 2048, min_seconds: float = 1.0) -> float:
    """fp32 square matmul rate of torch on this machine (torch's current thread count)."""
    return matmul_rates(size, min_seconds)["wall"]


def matmul_rates(size: int = 2048, min_seconds: float = 1.0) -> dict[str, float]:
    """fp32 matmul GFLOP/s per wall second ("wall") and per CPU second of this process
    ("cpu": time the threads actually ran, so less sensitive to other processes' load)."""
    import torch

    left, right = torch.randn(size, size), torch.randn(size, size)
    left @ right  # warm-up: threads, MKL buffers
    calls, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while True:
        left @ right
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            flops = 2 * size**3 * calls / 1e9
            return {"wall": flops / elapsed, "cpu": flops / (time.process_time() - cpu_started)}


def s3d_flops_per_clip(clip_len: int, crop: int = 224) -> int:
    """FLOPs of one S3D forward on a (1, 3, clip_len, crop, crop) clip (FlopCounterMode, on the
    meta device: shapes only, nothing computed)."""
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from feature_extractors.s3d import build_s3d_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build_s3d_backbone("random")
    model = model.eval().to("meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.empty(1, 3, clip_len, crop, crop, device="meta"))
    return int(counter.get_total_flops())
