"""A synthetic MSR-VTT-format dataset of real video files, for demos and end-to-end tests.

Each video shows one moving object whose shape, colour and motion depend on its class, plus
a distractor object and a textured background, all jittered per video; the audio track plays
class-dependent tones; the captions name the class among filler words. Every video is seen
through a simulated camera (:class:`Camera`): train and val videos through the training
cameras, test videos through cameras never seen in training. That is the cross-camera setting
CRIF targets: the pixels carry the class but shift with the camera, while captions and audio
are clean privileged signals.

Usage::

    info = generate_synthetic_dataset("outputs/synthetic", SyntheticConfig(num_videos=100))
    manifest = read_msrvtt(info["annotations"], info["videos"])

Multi-label (``labels_per_video > 1``): each video shows that many class objects, plays their
tones and names them all in its captions; MSR-VTT has one category per video, so the
annotations are ActivityNet-format files instead (``train.json``, ``val_1.json``,
``val_2.json`` and the ``activity_net.v1-3.min.json`` ground truth, one annotation per class)::

    info = generate_synthetic_dataset("outputs/ml", SyntheticConfig(labels_per_video=2))
    manifest = read_activitynet(info["annotations"], info["videos"],
                                ground_truth=info["ground_truth"], task="multi_label")

The output is a function of the config: decoded frames, audio samples and annotations are the
same for the same seed (file bytes may differ in encoder metadata).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.ingest.manifest import MSRVTT_CATEGORIES
from pipeline.score.shifts import gaussian_blur_float, resize_float

__all__ = [
    "DEFAULT_CAMERAS",
    "Camera",
    "SyntheticConfig",
    "apply_camera",
    "generate_synthetic_dataset",
]


@dataclass(frozen=True)
class Camera:
    """A simulated camera condition, applied to every frame of a video."""

    name: str
    brightness: float = 0.0  # added, as a fraction of the full range [-1, 1]
    contrast: float = 1.0  # gain around mid-grey
    color_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel (R, G, B) gain
    blur: float = 0.0  # Gaussian sigma in pixels
    noise: float = 0.0  # Gaussian sensor noise std in [0, 255] units
    scale: float = 1.0  # resolution: downsample by this factor, then back up


DEFAULT_CAMERAS: dict[str, Camera] = {
    # training cameras: near-neutral
    "cam_a": Camera("cam_a", noise=2.0),
    "cam_b": Camera("cam_b", 0.05, 0.9, (1.05, 1.0, 0.95), blur=0.5, noise=3.0),
    # unseen test cameras: dark and blue, soft and grainy / bright and warm, low resolution
    "cam_c": Camera("cam_c", -0.15, 0.75, (0.8, 0.95, 1.25), blur=1.2, noise=8.0, scale=0.6),
    "cam_d": Camera("cam_d", 0.15, 1.25, (1.25, 1.05, 0.75), blur=0.8, noise=10.0, scale=0.75),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; the dataset is a pure function of these fields."""

    num_videos: int = 100
    num_classes: int = 5  # <= 20: class k is MSR-VTT category k
    duration: float = 2.0  # seconds
    fps: int = 15
    width: int = 160
    height: int = 120
    seed: int = 0
    train_cameras: tuple[str, ...] = ("cam_a", "cam_b")
    test_cameras: tuple[str, ...] = ("cam_c", "cam_d")
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    audio: bool = True
    sample_rate: int = 16000
    captions_per_video: int = 5
    # size of the class objects relative to the default (radius 9-14% of the shorter side)
    object_scale: float = 1.0
    # P(a train/val video's background is its class's own scene); test videos never are. > 0
    # puts a shortcut in the training cameras (kitchens film cooking) that new cameras lack.
    scene_bias: float = 0.0
    # captions also say how big each class object is (small, medium-sized, big): privileged
    # detail of the video's content beyond its label, as real captions have
    describe_objects: bool = False
    # classes shown in each video; > 1: multi-label, with ActivityNet-format annotations
    labels_per_video: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(MSRVTT_CATEGORIES):
            raise ValueError(f"num_classes must be in 1..20, not {self.num_classes}")
        if not 1 <= self.labels_per_video <= self.num_classes:
            raise ValueError(
                f"labels_per_video must be in 1..num_classes, not {self.labels_per_video}"
            )
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 16:
            raise ValueError("width and height must be even and at least 16 (yuv420p)")
        if self.num_videos < 1 or self.fps < 1 or self.duration <= 0 or self.sample_rate < 8000:
            raise ValueError("num_videos, fps, duration must be positive; sample_rate >= 8000")
        fractions = (self.val_fraction, self.test_fraction)
        if min(fractions) < 0 or sum(fractions) >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 with a sum below 1")
        if not self.train_cameras or not self.test_cameras:
            raise ValueError("train_cameras and test_cameras must each name at least one camera")


# ---------------------------------------------------------------------------- cameras


def _add_sensor_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise in place, each frame a random window of one shared random bank.

    Drawing a fresh normal per sample costs more than the rest of a clip's rendering; windows
    at random offsets of a two-frame bank look the same to a classifier at a tenth the cost.
    """
    frame_size = math.prod(image.shape[1:])
    bank = rng.standard_normal(2 * frame_size, dtype=np.float32) * np.float32(std)
    for frame, start in zip(image, rng.integers(0, frame_size, len(image)), strict=True):
        frame += bank[start : start + frame_size].reshape(frame.shape)


def apply_camera(
    frames: np.ndarray, camera: Camera, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 as seen through ``camera``; a new uint8 array.

    Order follows a real camera: optics (resolution, blur; blur sigma in output pixels), then
    colour response (cast, contrast, brightness), then sensor noise. The default Camera is the
    identity. ``rng`` draws the noise (a fixed generator keeps the output deterministic).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, not {frames.shape} {frames.dtype}")
    if all(getattr(camera, f.name) == f.default for f in fields(Camera) if f.name != "name"):
        return frames.copy()
    image = frames.astype(np.float32)
    height, width = frames.shape[1:3]
    small = (max(1, round(height * camera.scale)), max(1, round(width * camera.scale)))
    if small != (height, width):
        image = resize_float(image, *small)
    if camera.blur > 0:  # at the sensor's resolution: the same optics, far fewer pixels
        image = gaussian_blur_float(image, camera.blur * small[0] / height)
    if small != (height, width):
        image = resize_float(image, height, width)
    # cast, contrast around mid-grey and brightness as one per-channel gain and offset
    gain = np.asarray(camera.color_cast, dtype=np.float32) * camera.contrast
    offset = 127.5 * (1 - camera.contrast) + 255.0 * camera.brightness
    image *= gain
    image += np.float32(offset)
    if camera.noise > 0:
        _add_sensor_noise(image, camera.noise, rng if rng is not None else np.random.default_rng(0))
    np.rint(image, out=image)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


# ---------------------------------------------------------------------------- content

# Shape masks on offsets (dx, dy) from the object's centre, radius r; all (T, H, W) boolean.
_SHAPES = (
    lambda dx, dy, r: dx * dx + dy * dy <= r * r,  # disc
    lambda dx, dy, r: np.maximum(abs(dx), abs(dy)) <= 0.85 * r,  # square
    lambda dx, dy, r: (dy <= 0.5 * r) & (abs(dx) <= (dy + r) * 0.577),  # triangle
    lambda dx, dy, r: abs(dx) + abs(dy) <= r,  # diamond
    lambda dx, dy, r: abs(dx * dx + dy * dy - 0.6 * r * r) <= 0.4 * r * r,  # ring
    lambda dx, dy, r: (
        (np.minimum(abs(dx), abs(dy)) <= 0.3 * r) & (np.maximum(abs(dx), abs(dy)) <= r)
    ),
)
# Three caption words per MSR-VTT category, in category order; none appears in the fillers.
_CLASS_WORDS = (
    ("song", "guitar", "singer"), ("person", "woman", "crowd"), ("video game", "gamer", "console"),
    ("football", "athlete", "match"), ("news", "reporter", "politician"),
    ("lecture", "teacher", "lesson"), ("tv show", "host", "episode"),
    ("movie", "comedian", "actor"), ("cartoon", "animated character", "anime"),
    ("car", "truck", "engine"), ("tutorial", "instructions", "demonstration"),
    ("tourist", "beach", "journey"), ("robot", "experiment", "computer"),
    ("dog", "cat", "pet"), ("kids", "baby", "family"), ("documentary", "wildlife", "history"),
    ("food", "drink", "restaurant"), ("cooking", "chef", "recipe"),
    ("makeup", "fashion", "dress"), ("advertisement", "product", "commercial"),
)  # fmt: skip
_TEMPLATES = (
    "{subject} shows a {word} {filler}",
    "a clip about the {word} with {distractor} {filler}",
    "{subject} talks about the {word} near {distractor}",
    "there is a {word} and {distractor} on screen {filler}",
    "{filler} {subject} watches the {word}",
)
_SUBJECTS = ("someone", "a man", "a girl", "the camera", "a group of people", "an old man")
_DISTRACTORS = ("a table", "some text", "a window", "a wall", "bright lights", "a street corner")
_SPLIT_NAMES = {"train": "train", "val": "validate", "test": "test"}  # ours -> MSR-VTT
_FILLERS = ("", "today", "for a while", "again", "outdoors", "indoors", "at night", "slowly")


def _class_style(label: int) -> tuple[int, float, float, float]:
    """(shape, hue, direction in radians, speed in frame-widths per second) of a class."""
    hue = (label * 0.381966) % 1.0  # golden-ratio steps keep neighbouring classes apart
    direction = 2 * math.pi * ((label * 0.618034 + 0.1) % 1.0)
    return label % len(_SHAPES), hue, direction, 0.12 + 0.08 * (label % 3)


def _bounce(start: float, velocity: float, times: np.ndarray, low: float, high: float):
    """Positions of a point moving at ``velocity`` and bouncing between ``low`` and ``high``."""
    span = high - low
    travelled = (start - low + velocity * times) % (2 * span)
    return low + span - np.abs(span - travelled)


def _render_frames(
    config: SyntheticConfig,
    labels: tuple[int, ...],
    rng: np.random.Generator,
    scene: int | None = None,
    sizes: list[float] | None = None,
    shades: list[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Clean frames (T, H, W, 3) uint8: textured background, distractor, one object a class.
    ``scene``: the background is that class's fixed scene (low-frequency colours of its own).
    ``sizes`` receives each class object's radius relative to its range, in [0, 1], ``shades``
    its (saturation, value) likewise."""
    count, height, width = round(config.duration * config.fps), config.height, config.width
    times = np.arange(count, dtype=np.float32) / config.fps
    grid = rng.uniform(30, 200, (1, 4, 5, 3)).astype(np.float32)  # low-frequency colours
    if scene is not None:
        scene_rng = np.random.default_rng([config.seed, 2, scene])
        grid = scene_rng.uniform(30, 200, (1, 4, 5, 3)).astype(np.float32)
    background = resize_float(grid, height, width)[0] + rng.normal(0, 6, (height, width, 1))
    frames = np.broadcast_to(background.astype(np.float32), (count, height, width, 3)).copy()
    rows = np.arange(height, dtype=np.float32)[None, :, None]
    columns = np.arange(width, dtype=np.float32)[None, None, :]
    unit = min(height, width)
    objects = [(int(rng.integers(len(_SHAPES))), rng.random(), rng.uniform(0, 2 * math.pi),
                rng.uniform(0.05, 0.3), unit * rng.uniform(0.05, 0.08))]  # fmt: skip
    for label in labels:  # the distractor first, then one object per class
        shape, hue, direction, speed = _class_style(label)
        hue = (hue + rng.uniform(-0.03, 0.03)) % 1.0
        direction = direction + rng.uniform(-0.25, 0.25)
        speed, relative = speed * rng.uniform(0.8, 1.2), rng.uniform(0.09, 0.14)
        objects.append((shape, hue, direction, speed, unit * relative * config.object_scale))
        if sizes is not None:
            sizes.append((relative - 0.09) / 0.05)
    for number, (shape_index, object_hue, angle, object_speed, radius) in enumerate(objects):
        velocity = object_speed * width
        x = _bounce(rng.uniform(radius, width - radius), velocity * math.cos(angle), times,
                    radius, width - radius)  # fmt: skip
        y = _bounce(rng.uniform(radius, height - radius), velocity * math.sin(angle), times,
                    radius, height - radius)  # fmt: skip
        mask = _SHAPES[shape_index](columns - x[:, None, None], rows - y[:, None, None], radius)
        saturation, value = rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95)
        frames[mask] = 255 * _hsv_to_rgb(object_hue, saturation, value)
        if shades is not None and number > 0:  # the class objects, not the distractor
            shades.append(((saturation - 0.55) / 0.35, (value - 0.6) / 0.35))
    frames *= rng.uniform(0.9, 1.1)  # per-video illumination
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    channel = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return value - value * saturation * np.clip(np.minimum(channel, 4 - channel), 0, 1)


def _render_audio(
    config: SyntheticConfig, labels: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Mono float32 audio: per class two class-pitched tones with a class-rate tremolo (the
    classes' mean), light noise."""
    rate = config.sample_rate
    times = np.arange(round(config.duration * rate)) / rate
    signal = np.zeros(times.shape)
    for label in labels:
        pitch = min(220.0 * 2 ** (label / 4), 0.3 * rate) * rng.uniform(0.99, 1.01)  # 1/4 octave
        tremolo = 0.6 + 0.4 * np.sin(2 * math.pi * (1 + label % 4) * times + rng.uniform(0, 6.3))
        tones = 0.3 * np.sin(2 * math.pi * pitch * times + rng.uniform(0, 6.3))
        tones += 0.15 * np.sin(2 * math.pi * 1.5 * pitch * times + rng.uniform(0, 6.3))
        signal += tones * tremolo / len(labels)
    signal += rng.normal(0, 0.02, times.shape)
    return np.clip(signal, -1, 1).astype(np.float32)


_SIZE_WORDS = ("small", "medium-sized", "big")
_VALUE_WORDS = ("dark", "", "bright")
_SATURATION_WORDS = ("pale", "", "vivid")


def _word(words: tuple[str, ...], position: float) -> str:
    """The word of ``position`` in [0, 1] among equal bins."""
    return words[min(int(position * len(words)), len(words) - 1)]


def _captions(
    labels: tuple[int, ...],
    count: int,
    rng: np.random.Generator,
    described: tuple[list, list] | None = None,
) -> list[str]:
    """Template sentences with a word of each class, a subject, distractor and filler words;
    with ``described`` (sizes and shades of the class objects), each class word also says how
    big, how light and how vivid its object is."""
    captions = []
    size_words = [""] * len(labels)
    if described is not None:
        size_words = [
            f"{_word(_SIZE_WORDS, size)} {_word(_VALUE_WORDS, value)} "
            f"{_word(_SATURATION_WORDS, saturation)} "
            for size, (saturation, value) in zip(*described, strict=True)
        ]
    for _ in range(count):
        template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        text = template.format(
            word=" and ".join(
                size + _CLASS_WORDS[label][rng.integers(3)]
                for label, size in zip(labels, size_words, strict=True)
            ),
            subject=_SUBJECTS[rng.integers(len(_SUBJECTS))],
            distractor=_DISTRACTORS[rng.integers(len(_DISTRACTORS))],
            filler=_FILLERS[rng.integers(len(_FILLERS))],
        )
        captions.append(" ".join(text.split()))
    return captions


# ---------------------------------------------------------------------- files on disk


def _audio_codec(config: SyntheticConfig) -> str | None:
    """The audio codec: AAC when audio is wanted and PyAV can encode it, else None (warned)."""
    if not config.audio:
        return None
    try:
        av.codec.Codec("aac", "w")
    except ValueError:
        warnings.warn("PyAV has no AAC encoder: writing videos WITHOUT audio tracks", stacklevel=3)
        return None
    return "aac"


def _write_video(
    path: Path, frames: np.ndarray, audio: np.ndarray | None, config: SyntheticConfig
) -> None:
    """An MP4 file: H.264 yuv420p video and, when given, mono AAC audio."""
    with av.open(str(path), "w") as container:
        # One encoder thread: deterministic output and fair to the other processes.
        options = {"preset": "ultrafast", "crf": "20", "threads": "1"}
        video = container.add_stream("libx264", rate=config.fps, options=options)
        video.width, video.height, video.pix_fmt = config.width, config.height, "yuv420p"
        sound = None
        if audio is not None:
            sound = container.add_stream(
                "aac", rate=config.sample_rate, layout="mono", options={"aac_coder": "fast"}
            )
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is None:
            return
        for start in range(0, len(audio), 1024):  # AAC's frame size
            chunk = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], "fltp", "mono")
            chunk.sample_rate, chunk.pts = config.sample_rate, start
            chunk.time_base = Fraction(1, config.sample_rate)
            container.mux(sound.encode(chunk))
        container.mux(sound.encode())


def _assign_labels_and_splits(config: SyntheticConfig) -> tuple[list[tuple], list[str]]:
    """Balanced labels and MSR-VTT splits ("train", "validate", "test") spread over classes.

    Videos are ranked within their (first) class and test, then validate, take the lowest
    ranks, so every class reaches every split as evenly as the counts allow, even for tiny
    datasets. Multi-label videos add ``labels_per_video - 1`` other classes, drawn uniformly.
    """
    rng = np.random.default_rng([config.seed, 0])
    count = config.num_videos
    labels = rng.permutation(np.arange(count) % config.num_classes)
    rank = np.zeros(count)
    for label in range(config.num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        rank[members] = np.arange(len(members))
    order = np.lexsort((rng.random(count), rank))
    test_count = round(count * config.test_fraction)
    val_count = round(count * config.val_fraction)
    splits = ["train"] * count
    for position, index in enumerate(order[: test_count + val_count]):
        splits[index] = "test" if position < test_count else "validate"
    extra = np.random.default_rng([config.seed, 2])  # the single-label draws stay as they were
    video_labels = []
    for label in labels.tolist():
        others = [k for k in range(config.num_classes) if k != label]
        chosen = extra.permutation(others)[: config.labels_per_video - 1].tolist()
        video_labels.append((label, *chosen))
    return video_labels, splits


def generate_synthetic_dataset(
    out_dir: str | Path,
    config: SyntheticConfig = SyntheticConfig(),  # noqa: B008 (frozen, so safe as a default)
    cameras: dict[str, Camera] | None = None,
    *,
    workers: int = 1,
) -> dict:
    """Write ``<out>/videos/video<i>.mp4`` and MSR-VTT annotations; return where and what.

    Returns ``{"videos", "dataset": "msrvtt", "annotations": [train_val json, test json],
    "num_videos", "splits": {train, val, test counts}, "cameras": {video_id: camera name},
    "labels": {video_id: category}, "class_names", "audio_codec"}``. Multi-label
    (``labels_per_video > 1``): ``"dataset": "activitynet"``, ``"annotations"``: [train,
    val_1, val_2 json], ``"ground_truth"``: the ground-truth json, ``"labels"``: {video_id:
    sorted class indices into ``"class_names"``}, which are sorted as ``read_activitynet``
    numbers them. Existing files of the same names are replaced.
    ``workers > 1`` renders in that many spawned processes (scripts then need the usual
    ``if __name__ == "__main__":`` guard); the output is the same for any worker count.
    """
    cameras = DEFAULT_CAMERAS if cameras is None else cameras
    for name in config.train_cameras + config.test_cameras:
        if name not in cameras:
            raise ValueError(f"camera {name!r} is not defined (known: {sorted(cameras)})")
    out_dir = Path(out_dir)
    videos_dir, annotations_dir = out_dir / "videos", out_dir / "annotations"
    videos_dir.mkdir(parents=True, exist_ok=True)
    annotations_dir.mkdir(parents=True, exist_ok=True)
    audio_codec = _audio_codec(config)
    labels, splits = _assign_labels_and_splits(config)
    make = functools.partial(_make_video, config=config, cameras=cameras,
                             audio_codec=audio_codec, videos_dir=videos_dir)  # fmt: skip
    arguments = (range(config.num_videos), labels, splits)
    if workers > 1:  # spawn, not fork: the caller may hold Ray or torch threads
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(make, *arguments, chunksize=4))
    else:
        results = list(map(make, *arguments))
    summary = {
        "videos": str(videos_dir),
        "num_videos": config.num_videos,
        "splits": {name: splits.count(key) for name, key in _SPLIT_NAMES.items()},
        "cameras": {entry["video_id"]: entry["camera"] for entry, _ in results},
        "audio_codec": audio_codec,
    }
    if config.labels_per_video > 1:
        return {**summary, **_write_activitynet(annotations_dir, results, config)}
    info = {"generator": "pipeline.synthetic.videos", "seed": config.seed}
    documents = {
        part: {"info": info, "videos": [], "sentences": []} for part in ("train_val", "test")
    }
    for entry, captions in results:  # in video order, so sen_ids do not depend on workers
        document = documents["test" if entry["split"] == "test" else "train_val"]
        document["videos"].append(entry)
        for caption in captions:
            sen_id = len(document["sentences"])
            document["sentences"].append({"caption": caption, "video_id": entry["video_id"],
                                          "sen_id": sen_id})  # fmt: skip
    paths = [annotations_dir / f"{part}_videodatainfo.json" for part in documents]
    for path, document in zip(paths, documents.values(), strict=True):
        path.write_text(json.dumps(document, indent=1))
    return {
        **summary,
        "dataset": "msrvtt",
        "annotations": [str(path) for path in paths],
        "labels": {entry["video_id"]: entry["category"] for entry, _ in results},
        "class_names": list(MSRVTT_CATEGORIES[: config.num_classes]),
    }


def _write_activitynet(directory: Path, results: list, config: SyntheticConfig) -> dict:
    """ActivityNet-format annotations of multi-label videos: captions files per split and the
    ground truth (taxonomy leaves = class names, one annotation per class of a video).

    ``read_activitynet`` numbers the classes by their sorted names, so the returned
    ``class_names`` are sorted and ``labels`` index them."""
    names = list(MSRVTT_CATEGORIES[: config.num_classes])
    class_names = sorted(names)
    files = {"train": "train.json", "validate": "val_1.json", "test": "val_2.json"}
    captions: dict[str, dict] = {split: {} for split in files}
    database, labels = {}, {}
    for entry, sentences in results:
        video_id, duration = entry["video_id"], entry["end time"]
        captions[entry["split"]][video_id] = {
            "duration": duration,
            "timestamps": [[0.0, duration]] * len(sentences),
            "sentences": sentences,
        }
        classes = [names[k] for k in entry["categories"]]
        database[video_id] = {
            "duration": duration,
            "subset": {"train": "training", "validate": "validation"}.get(
                entry["split"], "testing"
            ),
            "annotations": [{"label": name, "segment": [0.0, duration]} for name in classes],
        }
        labels[video_id] = sorted(class_names.index(name) for name in classes)
    taxonomy = [{"nodeId": 0, "nodeName": "Root", "parentId": None, "parentName": None}]
    taxonomy += [
        {"nodeId": k + 1, "nodeName": name, "parentId": 0, "parentName": "Root"}
        for k, name in enumerate(names)
    ]
    ground_truth = directory / "activity_net.v1-3.min.json"
    document = {"version": "synthetic", "taxonomy": taxonomy, "database": database}
    ground_truth.write_text(json.dumps(document, indent=1))
    for split, name in files.items():
        (directory / name).write_text(json.dumps(captions[split], indent=1))
    return {
        "dataset": "activitynet",
        "annotations": [str(directory / name) for name in files.values()],
        "ground_truth": str(ground_truth),
        "labels": labels,
        "class_names": class_names,
    }


def _make_video(
    index: int,
    labels: tuple[int, ...],
    split: str,
    *,
    config: SyntheticConfig,
    cameras: dict[str, Camera],
    audio_codec: str | None,
    videos_dir: Path,
) -> tuple[dict, list[str]]:
    """Render, film and encode one video; return its ``videos[]`` entry and its captions."""
    rng = np.random.default_rng([config.seed, 1, index])  # whatever the worker count
    video_id = f"video{index}"
    pool = config.test_cameras if split == "test" else config.train_cameras
    camera = cameras[pool[int(rng.integers(len(pool)))]]
    bias = config.scene_bias  # (no draw at 0: the default dataset is unchanged)
    scene = labels[0] if split != "test" and bias > 0 and rng.random() < bias else None
    sizes: list[float] = []
    shades: list[tuple[float, float]] = []
    frames = _render_frames(config, labels, rng, scene, sizes, shades)
    frames = apply_camera(frames, camera, rng)
    audio = _render_audio(config, labels, rng) if audio_codec else None
    _write_video(videos_dir / f"{video_id}.mp4", frames, audio, config)
    entry = {"category": labels[0], "url": f"synthetic://{camera.name}/{video_id}",
             "video_id": video_id, "start time": 0.0, "end time": float(config.duration),
             "split": split, "id": index, "camera": camera.name}  # fmt: skip
    if len(labels) > 1:  # every class of the video (the ActivityNet ground truth)
        entry["categories"] = list(labels)
    described = (sizes, shades) if config.describe_objects else None
    return entry, _captions(labels, config.captions_per_video, rng, described)
