"""The decode child process: ``python -m pipeline.decode.child`` (started by guard.py).

Reads length-prefixed pickled requests on stdin and answers on the original stdout (stray
library prints go to stderr): ``("clips", path, inputs, backend, threads, shift, key)`` ->
``("info", record)``, then ``("next",)`` -> ``("clip", index, num_clips, plan, frames)`` or
``("end",)``; ``("stop",)``; ``("audio", path)`` -> ``("audio", (waveform, rate) | None)``;
any failure -> ``("error", message)``. It exits when the parent does.

Test hook (never a config field): ``CRIF_DECODE_FAULT=crash:NAME,hang:OTHER`` makes it
segfault (hang) on every path containing NAME (OTHER).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time

from pipeline.decode.backends import DecodeError
from pipeline.decode.guard import _HEADER

FAULT_ENV = "CRIF_DECODE_FAULT"


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _inject_fault(path: str) -> None:
    for fault in os.environ.get(FAULT_ENV, "").split(","):
        kind, _, name = fault.partition(":")
        if name and name in path and kind == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if name and name in path and kind == "hang":
            time.sleep(10**6)


def _serve(requests, replies) -> None:
    from pipeline.decode.clips import ClipStream
    from pipeline.ingest.decode import decode_audio

    def reply(message: tuple) -> None:
        data = pickle.dumps(message, protocol=5)
        replies.write(_HEADER.pack(len(data)) + data)
        replies.flush()

    import feature_extractors.s3d  # noqa: F401 - torch, before "ready": no deadline pays it
    from pipeline.decode.backends import available_backends

    available_backends()  # imports every installed backend once
    reply(("ready",))
    clips = None
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the parent is gone
        message = pickle.loads(requests.read(_HEADER.unpack(header)[0]))
        try:
            if message[0] == "clips":
                _, path, inputs, backend, threads, shift, key = message
                _inject_fault(path)
                _set_threads(threads)
                stream = ClipStream(path, inputs, backend, threads, shift=shift, key=key)
                clips = iter(stream)
                reply(("info", stream.info.record()))
            elif message[0] == "next":
                item = next(clips, None) if clips is not None else None
                if item is None:
                    clips = None
                reply(("end",) if item is None else ("clip", *item))
            elif message[0] == "stop":
                if clips is not None:
                    clips.close()
                clips = None
                reply(("stopped",))
            elif message[0] == "audio":
                _inject_fault(message[1])
                reply(("audio", decode_audio(message[1])))
        except Exception as error:  # noqa: BLE001 - sent back, recorded by the parent
            clips = None
            if not isinstance(error, DecodeError):
                error = f"{type(error).__name__}: {error}"
            reply(("error", str(error)))


def _set_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != max(1, threads):
        torch.set_num_threads(max(1, threads))


def main() -> None:
    _die_with_parent()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of libraries go to stderr, never into the replies
    _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
