"""Dataset manifests: which videos exist, where they are, their split, labels and captions.

A manifest is the first stage of every job (DESIGN.md, data flow): it turns annotation files
plus a video root into rows ``video_id, path, split, label, labels, captions, segments,
duration`` that Ray Data reads. Readers only read: they never write or extract anything, and
bad input raises :class:`ManifestError` naming the file and the entry, so a typo in a
20 000-entry JSON file is found in seconds instead of after an hour of feature extraction.

Usage::

    manifest = read_msrvtt(["train_val_videodatainfo.json", "test_videodatainfo.json"],
                           "s3://bucket/msrvtt/videos", split_scheme="paper")
    table = manifest.to_table()          # one row per listed video
    rows = manifest.found()              # rows whose file exists; manifest.missing lists the rest

Videos are found as ``<root>/<video_id>.<ext>`` (any of :data:`VIDEO_EXTENSIONS`, any case)
with one pyarrow-filesystem listing per root, so ``s3://``, ``gs://`` and ``file://`` roots
work like local directories. Listing and opening files, folders, list files and tar archives
(:func:`find_videos`, :func:`open_input`, :func:`read_folder`) live in
:mod:`pipeline.ingest.sources`
and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline.ingest.records import Manifest, ManifestError, ManifestRow, manifest_schema
from pipeline.ingest.sources import (
    ARCHIVE_SEPARATOR,
    VIDEO_EXTENSIONS,
    find_videos,
    open_input,
    read_folder,
)

# The filesystem, folder and archive layer lives in pipeline.ingest.sources; its public names are
# re-exported here: ``from pipeline.ingest.manifest import open_input, read_folder`` works.
from pipeline.store import TASKS

__all__ = [
    "ARCHIVE_SEPARATOR",
    "MSRVTT_CATEGORIES",
    "SPLIT_SCHEMES",
    "VIDEO_EXTENSIONS",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "SplitScheme",
    "find_videos",
    "manifest_schema",
    "open_input",
    "read_activitynet",
    "read_folder",
    "read_msrvtt",
]

MSRVTT_CATEGORIES: tuple[str, ...] = (
    "music", "people", "gaming", "sports/actions", "news/events/politics", "education",
    "tv shows", "movie/comedy", "animation", "vehicles/autos", "howto", "travel",
    "science/technology", "animals/pets", "kids/family", "documentary", "food/drink",
    "cooking", "beauty/fashion", "advertisement",
)  # fmt: skip
_MSRVTT_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}
# "official": the datasets' own train/val/test. "paper": the CRIF paper's train and test only
# (MSR-VTT: validate joins train, 7010/2990; ActivityNet: val_1 and val_2 are the test split).
SplitScheme = Literal["official", "paper"]
SPLIT_SCHEMES = get_args(SplitScheme)
logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ JSON helpers


def _load_json(path: str | Path, what: str) -> Any:
    try:
        with open_input(str(path)) as stream:
            return json.loads(stream.read())
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: {what} not found") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: malformed JSON in {what}: {error}") from error


def _require(entry: Any, keys: Sequence[str], path: str | Path, where: str) -> None:
    if not isinstance(entry, dict):
        raise ManifestError(f"{path}: {where}: expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise ManifestError(f"{path}: {where}: missing key {key!r}")


def _as_list(annotations: Sequence[str | Path] | str | Path) -> list[str | Path]:
    return [annotations] if isinstance(annotations, (str, Path)) else list(annotations)


def _lookup(found: dict[str, str], *video_ids: str) -> str | None:
    for video_id in video_ids:
        location = found.get(video_id.lower())
        if location is not None:
            return location
    return None


# ---------------------------------------------------------------------------- MSR-VTT


def _msrvtt_video(entry: Any, path: str | Path, index: int) -> tuple[str, int, str, float | None]:
    """(video_id, category, split, duration) of one ``videos[]`` entry, validated."""
    _require(entry, ("video_id",), path, f"videos[{index}]")
    where = f"videos[{index}] (video_id={entry['video_id']!r})"
    _require(entry, ("category", "split"), path, where)
    category = entry["category"]
    if isinstance(category, bool) or not isinstance(category, int) or not 0 <= category < 20:
        raise ManifestError(f"{path}: {where}: unknown category {category!r} (expected 0..19)")
    split = _MSRVTT_SPLITS.get(str(entry["split"]).lower())
    if split is None:
        raise ManifestError(f"{path}: {where}: unknown split {entry['split']!r}")
    duration = None
    if "start time" in entry and "end time" in entry:
        try:
            duration = float(entry["end time"]) - float(entry["start time"])
        except (TypeError, ValueError) as error:
            raise ManifestError(f"{path}: {where}: bad start/end time: {error}") from error
    return str(entry["video_id"]), category, split, duration


def read_msrvtt(
    annotations: Sequence[str | Path], videos: str, *, split_scheme: str = "official"
) -> Manifest:
    """Read MSR-VTT ``*_videodatainfo.json`` files (any number) and match ``<videos>/<id>.<ext>``.

    ``split_scheme`` "official" keeps train/validate/test (6513/497/2990 on the real set);
    "paper" merges validate into train (7010/2990), as the CRIF paper reports.
    """
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be 'official' or 'paper', not {split_scheme!r}")
    entries: dict[str, dict[str, Any]] = {}  # video_id -> fields, in file order
    sentences: list[tuple[str | Path, int, Any]] = []
    for path in _as_list(annotations):
        document = _load_json(path, "MSR-VTT annotation file")
        _require(document, ("videos",), path, "top level")
        if not isinstance(document["videos"], list):
            raise ManifestError(f"{path}: top level: 'videos' is not a list")
        for index, entry in enumerate(document["videos"]):
            video_id, category, split, duration = _msrvtt_video(entry, path, index)
            if video_id in entries:
                first = entries[video_id]["file"]
                raise ManifestError(
                    f"{path}: videos[{index}]: duplicate video_id {video_id!r} "
                    f"(first listed in {first})"
                )
            if split_scheme == "paper" and split == "val":
                split = "train"
            entries[video_id] = dict(file=path, category=category, split=split, duration=duration)
        sentences.extend((path, index, s) for index, s in enumerate(document.get("sentences", [])))
    captions = _msrvtt_captions(sentences, entries)
    found = find_videos(videos)
    rows, missing = [], []
    for video_id, fields in entries.items():
        location = _lookup(found, video_id)
        if location is None:
            missing.append(video_id)
        caption_list = tuple(text for _, _, text in sorted(captions.get(video_id, [])))
        rows.append(
            ManifestRow(
                video_id=video_id,
                path=location,
                split=fields["split"],
                label=fields["category"],
                labels=(fields["category"],),
                captions=caption_list,
                duration=fields["duration"],
            )
        )
    return Manifest("msrvtt", "single_label", list(MSRVTT_CATEGORIES), rows, missing)


def _msrvtt_captions(
    sentences: list[tuple[str | Path, int, Any]], entries: dict[str, dict[str, Any]]
) -> dict[str, list[tuple[float, int, str]]]:
    """video_id -> [(sen_id, position, caption)], sortable into sen_id order."""
    captions: dict[str, list[tuple[float, int, str]]] = {}
    for position, (path, index, sentence) in enumerate(sentences):
        _require(sentence, ("video_id", "caption"), path, f"sentences[{index}]")
        video_id = str(sentence["video_id"])
        if video_id not in entries:
            raise ManifestError(
                f"{path}: sentences[{index}] (sen_id={sentence.get('sen_id')!r}): "
                f"caption for unknown video_id {video_id!r}"
            )
        order = float(sentence.get("sen_id", position))
        captions.setdefault(video_id, []).append((order, position, str(sentence["caption"])))
    return captions


# ------------------------------------------------------------------ ActivityNet Captions


def _activitynet_split(path: str | Path) -> str:
    stem = Path(str(path).split("?")[0]).name.lower().removesuffix(".json")
    for suffix, split in (("val_1", "val"), ("val_2", "test"), ("train", "train")):
        if stem.endswith(suffix):
            return split
    raise ManifestError(f"{path}: cannot tell the split (expected train, val_1 or val_2 .json)")


def _read_ground_truth(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """(database, class names = sorted taxonomy leaves) of ``activity_net.v1-3.min.json``."""
    document = _load_json(path, "ActivityNet ground truth")
    _require(document, ("database", "taxonomy"), path, "top level")
    database, taxonomy = document["database"], document["taxonomy"]
    if not isinstance(database, dict) or not isinstance(taxonomy, list):
        raise ManifestError(f"{path}: top level: 'database' must be an object, 'taxonomy' a list")
    for index, node in enumerate(taxonomy):
        _require(node, ("nodeName", "parentName"), path, f"taxonomy[{index}]")
    parents = {node["parentName"] for node in taxonomy}
    leaves = sorted({node["nodeName"] for node in taxonomy} - parents)
    return database, leaves


def _activitynet_labels(
    video_id: str, record: Any, class_index: dict[str, int], path: str | Path
) -> tuple[int | None, tuple[int, ...]]:
    """(majority label, sorted unique labels); ties go to the first label annotated."""
    where = f"database[{video_id!r}]"
    _require(record, ("annotations",), path, where)
    names = []
    for index, annotation in enumerate(record["annotations"]):
        _require(annotation, ("label",), path, f"{where}.annotations[{index}]")
        if annotation["label"] not in class_index:
            raise ManifestError(
                f"{path}: {where}.annotations[{index}]: label {annotation['label']!r} "
                "is not a taxonomy leaf"
            )
        names.append(annotation["label"])
    if not names:
        return None, ()
    counts = Counter(names)  # Counter keeps first-seen order, and max() returns the first
    majority = max(counts, key=counts.__getitem__)
    return class_index[majority], tuple(sorted({class_index[name] for name in names}))


def _activitynet_entry(video_key: str, entry: Any, path: str | Path) -> tuple:
    """(captions, segments, duration) of one caption-file entry, validated."""
    where = f"entry {video_key!r}"
    _require(entry, ("duration", "timestamps", "sentences"), path, where)
    timestamps, sentences = entry["timestamps"], entry["sentences"]
    if not isinstance(timestamps, list) or not isinstance(sentences, list):
        raise ManifestError(f"{path}: {where}: 'timestamps' and 'sentences' must be lists")
    if len(timestamps) != len(sentences):
        raise ManifestError(f"{path}: {where}: {len(timestamps)} timestamps for {len(sentences)}")
    try:
        segments = tuple((float(start), float(end)) for start, end in timestamps)
        duration = float(entry["duration"])
    except (TypeError, ValueError) as error:
        raise ManifestError(f"{path}: {where}: bad timestamps or duration: {error}") from error
    return tuple(str(sentence).strip() for sentence in sentences), segments, duration


def _activitynet_entries(
    annotations: Sequence[str | Path], split_scheme: str = "official"
) -> Iterator[tuple[str, tuple]]:
    """(video key, (split, captions, segments, duration)) over all caption files, val_1 first.

    Logs each file's videos and the split they go to (and how many of val_2's are val_1's)."""
    order = {"train": 0, "val": 1, "test": 2}  # val_1 is read before val_2 whatever the order
    files = sorted(_as_list(annotations), key=lambda path: order[_activitynet_split(path)])
    seen: dict[str, tuple[str | Path, str]] = {}
    for path in files:
        split = _activitynet_split(path)
        if split_scheme == "paper" and split == "val":
            split = "test"  # the paper tests on the validation videos (val_1 and val_2)
        document = _load_json(path, "ActivityNet Captions file")
        if not isinstance(document, dict):
            raise ManifestError(f"{path}: top level: expected an object of videos")
        repeated = 0
        for video_key, entry in document.items():
            fields = _activitynet_entry(video_key, entry, path)
            if video_key in seen:
                first_file, first_split = seen[video_key]
                if first_split != "train" and split != "train":
                    repeated += 1
                    continue  # in val_1 and val_2: the val_1 assignment wins
                raise ManifestError(
                    f"{path}: entry {video_key!r}: duplicate video_id (first in {first_file})"
                )
            seen[video_key] = (path, split)
            yield video_key, (split, *fields)
        also = f", {repeated} of them already in val_1 (kept there)" if repeated else ""
        logger.info(f"ActivityNet {Path(str(path)).name}: {len(document)} videos -> {split}{also}")


def read_activitynet(
    annotations: Sequence[str | Path],
    videos: str,
    *,
    ground_truth: str | Path,
    task: str = "single_label",
    split_scheme: str = "official",
) -> Manifest:
    """Read ActivityNet Captions files, labelled by joining the ActivityNet v1.3 ground truth.

    ``split_scheme`` "official": ``train.json`` -> train, ``val_1.json`` -> val,
    ``val_2.json`` -> test; "paper": train, and both val files -> test (the paper's 10,009
    training and 4,515 testing videos). A video in both val files keeps its val_1 entry (the
    log says how many). Ids absent from the ground truth (or without annotations) are excluded
    from the rows but listed in ``Manifest.unknown`` with a warning.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if split_scheme not in SPLIT_SCHEMES:
        raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, not {split_scheme!r}")
    database, class_names = _read_ground_truth(ground_truth)
    class_index = {name: index for index, name in enumerate(class_names)}
    found = find_videos(videos)
    rows, missing, unknown = [], [], []
    entries = _activitynet_entries(annotations, split_scheme)
    for video_key, (split, captions, segments, duration) in entries:
        bare_id = video_key.removeprefix("v_")
        record = database.get(bare_id)
        label, labels = (None, ())
        if record is not None:
            label, labels = _activitynet_labels(bare_id, record, class_index, ground_truth)
        if label is None:
            unknown.append(video_key)
            continue
        location = _lookup(found, video_key, bare_id)
        if location is None:
            missing.append(video_key)
        row = ManifestRow(video_key, location, split, label, labels, captions, segments, duration)
        rows.append(row)
    if unknown:
        warnings.warn(
            f"{len(unknown)} ActivityNet video(s) have no labels in {ground_truth} and were "
            f"excluded: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}",
            stacklevel=2,
        )
    return Manifest("activitynet", task, class_names, rows, missing, unknown)
