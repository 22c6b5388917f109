"""Decoding under a deadline, in a worker process that can be killed.

    worker = thread_worker()              # one per thread, reused across videos
    with worker.clips("video.mp4", inputs, decoder="auto", timing=Deadline()) as clips:
        clips.info                        # the decode record: backend, rotation, frames, ...
        for index, num_clips, plan, frames in clips:
            ...
    waveform, rate = worker.audio("video.mp4", Deadline())

A decoder may block (a named pipe with no writer never returns data), loop (containers that
claim frames they do not hold) or crash (a segfault in FFmpeg or decord). So each video is
decoded by a long-lived child process (``python -m pipeline.decode.child``: started once per
thread, reused for every video, so the normal path pays no process start or import), which
sends clips back one at a time on request: memory is one clip in each process. The parent
waits for each reply no longer than what is left of the video's deadline,
``max(min_seconds, seconds_per_second x duration)`` (opening has ``min_seconds``); time the
parent spends elsewhere (its consumer) is not charged. On a timeout the child is killed
(:class:`DecodeTimeout`, reason ``timeout``); if it dies (:class:`DecodeCrashed`, reason
``crashed``) it is replaced for the next video. With ``decoder="auto"`` a backend that cannot
open a file or crashes on it is followed by the next one; a timeout is final (another
backend would wait on the same blocked input).

Test hook (never a config field): ``CRIF_DECODE_FAULT`` (pipeline/decode/child.py) makes the
child segfault or hang on chosen paths.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from pipeline.decode.backends import DecodeError, backend_candidates, first_line

__all__ = [
    "Deadline",
    "DecodeCrashed",
    "DecodeTimeout",
    "DecodeWorker",
    "failure_reason",
    "thread_worker",
]

_HEADER = struct.Struct("<Q")  # the length of each pickled message
# A new child imports torch, PyAV and decord before it answers "ready": never charged to a
# video's deadline, but bounded.
STARTUP_SECONDS = 300.0


class DecodeTimeout(DecodeError):
    """The decoder did not answer within the video's deadline (the child was killed)."""


class DecodeCrashed(DecodeError):
    """The decoder process died (a signal or an exit) while decoding."""


def failure_reason(error: BaseException) -> str:
    """The ``reason`` recorded in _failures/: timeout, crashed, undecodable or error."""
    if isinstance(error, DecodeTimeout):
        return "timeout"
    if isinstance(error, DecodeCrashed):
        return "crashed"
    if isinstance(error, DecodeError):
        return "undecodable"
    return "error"


@dataclass(frozen=True)
class Deadline:
    """How long one video may take: max(min_seconds, seconds_per_second x duration)."""

    min_seconds: float = 60.0
    seconds_per_second: float = 2.0

    def for_duration(self, duration: float) -> float:
        return max(self.min_seconds, self.seconds_per_second * max(0.0, duration))


class DecodeWorker:
    """The parent's handle on one decode child process (started on first use)."""

    def __init__(self):
        self._process: subprocess.Popen | None = None

    # -------------------------------------------------------------- process and messages

    def _start(self) -> None:
        paths = [path for path in sys.path if path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.decode.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        try:
            ready = self._receive(STARTUP_SECONDS)
        except DecodeTimeout as error:
            raise DecodeCrashed("decoder process did not start") from error
        if ready != ("ready",):
            self.kill()
            raise DecodeCrashed(f"decoder process did not start: {ready!r}")

    def _send(self, message: tuple) -> None:
        if self._process is None or self._process.poll() is not None:
            self._start()
        data = pickle.dumps(message, protocol=5)
        try:
            self._process.stdin.write(_HEADER.pack(len(data)) + data)
            self._process.stdin.flush()
        except BrokenPipeError as error:
            raise self._crashed() from error

    def _receive(self, seconds: float) -> tuple:
        """The next reply, waiting at most ``seconds``; kills the child on a timeout."""
        if self._process is None:
            raise DecodeCrashed("decoder process is not running")
        end = time.monotonic() + max(0.0, seconds)
        header = self._read(_HEADER.size, end)
        return pickle.loads(self._read(_HEADER.unpack(header)[0], end))

    def _read(self, size: int, end: float) -> bytes:
        stream = self._process.stdout
        chunks, left = [], size
        while left:
            remaining = end - time.monotonic()
            ready, _, _ = select.select([stream], [], [], max(0.0, remaining))
            if not ready:
                self.kill()
                raise DecodeTimeout("decoder timed out (no answer within the deadline)")
            chunk = os.read(stream.fileno(), min(left, 1 << 22))
            if not chunk:
                raise self._crashed()
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _crashed(self) -> DecodeCrashed:
        process, self._process = self._process, None
        code = process.wait() if process is not None else None
        if code is not None and code < 0:
            how = f"signal {signal.Signals(-code).name}"
        else:
            how = f"exit code {code}"
        return DecodeCrashed(f"decoder process crashed ({how})")

    def kill(self) -> None:
        """Kill the child (it is started again on the next request)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _call(self, message: tuple, seconds: float) -> tuple:
        self._send(message)
        reply = self._receive(seconds)
        if reply[0] == "error":
            raise DecodeError(reply[1])
        return reply

    # ------------------------------------------------------------------------ requests

    def clips(
        self,
        path: str,
        inputs,
        decoder: str = "auto",
        threads: int = 1,
        *,
        shift: dict | None = None,
        key: str | None = None,
        timing: Deadline = Deadline(),
    ) -> GuardedClips:
        """Open ``path`` in the child with the first backend of ``decoder`` that decodes its
        first clip; the clips follow on iteration."""
        errors = []
        for backend in backend_candidates(decoder):
            started = time.monotonic()
            try:
                request = ("clips", path, inputs, backend, threads, shift, key)
                info = self._call(request, timing.min_seconds)[1]
            except DecodeTimeout:
                raise
            except DecodeError as error:  # crashed or undecodable: the next backend
                errors.append((backend, error))
                continue
            budget = timing.for_duration(info["duration"]) - (time.monotonic() - started)
            return GuardedClips(self, info, budget)
        if len(errors) == 1:
            raise errors[0][1]
        crashed = all(isinstance(error, DecodeCrashed) for _, error in errors)
        message = "; ".join(f"{backend}: {first_line(error)}" for backend, error in errors)
        kind = DecodeCrashed if crashed and errors else DecodeError
        raise kind(f"no backend decodes it: {message}" if errors else "no decoder installed")

    def audio(self, path: str, timing: Deadline = Deadline()):
        """decode_audio in the child: (mono float32 waveform, rate) or None (no audio)."""
        reply = self._call(("audio", path), timing.min_seconds)
        return None if reply[1] is None else reply[1]


class GuardedClips:
    """The clips of one opened video, fetched one at a time from the child."""

    def __init__(self, worker: DecodeWorker, info: dict, budget: float):
        self.worker, self.info, self.budget = worker, info, budget
        self._done = False

    def __iter__(self):
        while not self._done:
            started = time.monotonic()
            reply = self.worker._call(("next",), self.budget)
            self.budget -= time.monotonic() - started
            if reply[0] == "end":
                self._done = True
                return
            yield reply[1:]  # (index, num_clips, plan, frames)

    def close(self) -> None:
        if not self._done and self.worker._process is not None:
            self._done = True
            try:
                self.worker._call(("stop",), 10.0)
            except DecodeError:
                pass

    def __enter__(self) -> GuardedClips:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_LOCAL = threading.local()


def thread_worker() -> DecodeWorker:
    """This thread's decode worker (one child process per thread, reused)."""
    worker = getattr(_LOCAL, "worker", None)
    if worker is None:
        worker = _LOCAL.worker = DecodeWorker()
    return worker
