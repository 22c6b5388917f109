"""Video decoding: one interface, three backends, frames by presentation time, a deadline.

    from pipeline.decode import ClipStream, thread_worker, Deadline
    for index, num_clips, plan, frames in ClipStream("video.mp4", inputs, decoder="auto"):
        ...                                            # in this process
    with thread_worker().clips("video.mp4", inputs, timing=Deadline()) as clips:
        ...                                            # in a killable child, under a deadline

- backends.py: the ``VideoReader`` interface and the pyav, decord and torchcodec backends
  (times, upright frames, decoder scaling); ``available_backends()``, ``AUTO_ORDER``.
- clips.py: clips planned from the frames' times (S3D's ``plan_clips_at``), one in memory.
- guard.py: the reusable decode child process, its deadline and the failure reasons.

The extractors stay torch-only: they declare what they need (``ClipInputs``) and this
package delivers it.
"""

from pipeline.decode.backends import (
    AUTO_ORDER,
    BACKENDS,
    TORCH_FREE,
    DecodeError,
    VideoInfo,
    available_backends,
    backend_candidates,
    open_reader,
)
from pipeline.decode.clips import DECODER_RESIZE_DIFFERENCE, ClipStream, iter_clips, probe_video
from pipeline.decode.guard import (
    Deadline,
    DecodeCrashed,
    DecodeTimeout,
    DecodeWorker,
    failure_reason,
    thread_worker,
)

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DECODER_RESIZE_DIFFERENCE",
    "TORCH_FREE",
    "ClipStream",
    "Deadline",
    "DecodeCrashed",
    "DecodeError",
    "DecodeTimeout",
    "DecodeWorker",
    "VideoInfo",
    "available_backends",
    "backend_candidates",
    "failure_reason",
    "iter_clips",
    "open_reader",
    "probe_video",
    "thread_worker",
]
