"""Manifest readers on small JSON fixtures written here: counts, labels, lookups, bad input."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.ingest.manifest import (
    MSRVTT_CATEGORIES,
    Manifest,
    ManifestError,
    find_videos,
    open_input,
    read_activitynet,
    read_folder,
    read_msrvtt,
)
from pipeline.ingest.sources import tar_index


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document))
    return path


def touch(path: Path, content: bytes = b"video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------- MSR-VTT

# video id -> (category, split as written in the file)
TRAIN_VAL = {f"video{i}": (i % 20, "train") for i in range(6)} | {
    "video6": (4, "validate"),
    "video7": (19, "val"),
}
TEST = {"video8": (0, "test"), "video9": (7, "test"), "video10": (13, "test")}


def msrvtt_document(videos: dict, first_sentence: int = 0) -> dict:
    entries = [
        {
            "video_id": video_id,
            "category": category,
            "split": split,
            "start time": 1.5,
            "end time": 11.5,
            "url": "https://example.com",
            "id": index,
            "camera": "extra key",
        }
        for index, (video_id, (category, split)) in enumerate(videos.items())
    ]
    sentences = []
    for index, video_id in enumerate(videos):  # written out of sen_id order on purpose
        for number in (2, 0, 1):
            sen_id = first_sentence + 3 * index + number
            sentences.append(
                {"video_id": video_id, "caption": f"{video_id} #{number}", "sen_id": sen_id}
            )
    return {"info": {}, "videos": entries, "sentences": sentences}


@pytest.fixture()
def msrvtt(tmp_path: Path):
    """Annotation files and a video folder with mixed-case, mixed extensions; two files missing."""
    train_val = write_json(tmp_path / "train_val_videodatainfo.json", msrvtt_document(TRAIN_VAL))
    test = write_json(tmp_path / "test_videodatainfo.json", msrvtt_document(TEST, 1000))
    videos = tmp_path / "videos"
    for index, name in enumerate(
        [
            "video0.mp4",
            "VIDEO1.MKV",
            "Video2.WebM",
            "video3.avi",
            "video4.mov",
            "video5.mp4",
            "video6.mp4",
            "video8.mp4",
            "video9.mp4",
            "video7.txt",
            "video6.avi",
        ]
    ):
        touch(videos / name, bytes([index]))
    return [train_val, test], videos


def test_msrvtt_official_split_counts_labels_captions(msrvtt):
    annotations, videos = msrvtt
    manifest = read_msrvtt(annotations, str(videos))
    assert manifest.name == "msrvtt" and manifest.task == "single_label"
    assert manifest.class_names == list(MSRVTT_CATEGORIES) and len(MSRVTT_CATEGORIES) == 20
    assert (
        manifest.class_names[3] == "sports/actions" and manifest.class_names[19] == "advertisement"
    )
    splits = [row.split for row in manifest.rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (6, 2, 3)
    rows = {row.video_id: row for row in manifest.rows}
    assert rows["video7"].label == 19 and rows["video7"].labels == (19,)
    assert rows["video10"].label == 13 and rows["video6"].split == "val"
    assert rows["video0"].captions == ("video0 #0", "video0 #1", "video0 #2")  # sen_id order
    assert rows["video0"].duration == pytest.approx(10.0)
    # video7 only has a .txt and video10 has no file: both reported, neither dropped
    assert sorted(manifest.missing) == ["video10", "video7"]
    assert rows["video7"].path is None and len(manifest.found()) == 9
    assert rows["video1"].path == str(videos / "VIDEO1.MKV")
    assert rows["video6"].path == str(videos / "video6.mp4")  # .mp4 preferred over .avi


def test_msrvtt_paper_split_merges_validate_into_train(msrvtt):
    annotations, videos = msrvtt
    manifest = read_msrvtt(annotations, str(videos), split_scheme="paper")
    splits = [row.split for row in manifest.rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (8, 0, 3)
    with pytest.raises(ValueError, match="split_scheme"):
        read_msrvtt(annotations, str(videos), split_scheme="other")


def test_to_table_schema_and_values(msrvtt):
    annotations, videos = msrvtt
    table = read_msrvtt(annotations, str(videos)).to_table()
    assert table.num_rows == 11
    assert table.schema.field("label").type == pa.int32()
    assert table.schema.field("labels").type == pa.list_(pa.int32())
    assert table.column_names == [
        "video_id",
        "path",
        "split",
        "label",
        "labels",
        "captions",
        "segments",
        "duration",
    ]
    assert table.column("path").null_count == 2
    assert json.loads(table.schema.metadata[b"manifest"])["name"] == "msrvtt"


def test_file_uri_root_lists_through_pyarrow(msrvtt):
    annotations, videos = msrvtt
    manifest = read_msrvtt(annotations, videos.as_uri())
    row = next(row for row in manifest.rows if row.video_id == "video1")
    assert row.path == videos.as_uri() + "/VIDEO1.MKV"
    with open_input(row.path) as stream:
        assert stream.read() == bytes([1])
    assert set(find_videos(videos.as_uri())) == set(find_videos(str(videos)))


def mutate_msrvtt(tmp_path: Path, change) -> tuple[list[Path], str]:
    """Two valid files, then ``change(train_val_document, test_document)`` applied."""
    train_val, test = msrvtt_document(TRAIN_VAL), msrvtt_document(TEST, 1000)
    change(train_val, test)
    return [
        write_json(tmp_path / "train_val_videodatainfo.json", train_val),
        write_json(tmp_path / "test_videodatainfo.json", test),
    ], str(tmp_path)


@pytest.mark.parametrize(
    ("change", "file_name", "entry"),
    [
        (lambda a, b: a["videos"][2].update(category=20), "train_val", "video2"),
        (lambda a, b: a["videos"][1].update(category="music"), "train_val", "video1"),
        (lambda a, b: a["videos"][3].pop("category"), "train_val", "video3"),
        (lambda a, b: a["videos"][3].update(split="holdout"), "train_val", "video3"),
        (lambda a, b: b["videos"].append(dict(a["videos"][0])), "test_video", "video0"),
        (lambda a, b: a["videos"].append(dict(a["videos"][4])), "train_val", "video4"),
        (
            lambda a, b: b["sentences"].append(
                {"video_id": "video99", "caption": "x", "sen_id": 7}
            ),
            "test_video",
            "video99",
        ),
        (lambda a, b: a["sentences"][0].pop("caption"), "train_val", "sentences[0]"),
        (lambda a, b: a.pop("videos"), "train_val", "videos"),
        (lambda a, b: b["videos"][0].pop("video_id"), "test_video", "videos[0]"),
    ],
    ids=[
        "category-20",
        "category-string",
        "missing-category",
        "bad-split",
        "duplicate-across",
        "duplicate-within",
        "unknown-caption",
        "missing-caption",
        "missing-videos",
        "missing-video-id",
    ],
)
def test_msrvtt_bad_input_names_file_and_entry(tmp_path, change, file_name, entry):
    annotations, videos = mutate_msrvtt(tmp_path, change)
    with pytest.raises(ManifestError) as error:
        read_msrvtt(annotations, videos)
    assert file_name in str(error.value) and entry in str(error.value)


def test_msrvtt_missing_and_malformed_files(tmp_path):
    with pytest.raises(ManifestError, match="nowhere_videodatainfo.json"):
        read_msrvtt([tmp_path / "nowhere_videodatainfo.json"], str(tmp_path))
    broken = tmp_path / "broken_videodatainfo.json"
    broken.write_text('{"videos": [')
    with pytest.raises(ManifestError, match="broken_videodatainfo.json.*malformed JSON"):
        read_msrvtt([broken], str(tmp_path))
    good = write_json(tmp_path / "ok.json", msrvtt_document(TEST))
    with pytest.raises(ManifestError, match="no_such_dir"):
        read_msrvtt([good], str(tmp_path / "no_such_dir"))


# ------------------------------------------------------------------------- ActivityNet

TAXONOMY = [
    {"nodeId": 0, "nodeName": "Root", "parentName": None, "parentId": None},
    {"nodeId": 1, "nodeName": "Sports", "parentName": "Root", "parentId": 0},
    {"nodeId": 2, "nodeName": "Running", "parentName": "Sports", "parentId": 1},
    {"nodeId": 3, "nodeName": "Swimming", "parentName": "Sports", "parentId": 1},
    {"nodeId": 4, "nodeName": "Cooking", "parentName": "Root", "parentId": 0},
]  # leaves sorted: Cooking 0, Running 1, Swimming 2


def ground_truth_document() -> dict:
    def record(subset, *labels):
        annotations = [{"label": label, "segment": [0.0, 1.0]} for label in labels]
        return {"subset": subset, "duration": 30.0, "annotations": annotations}

    database = {
        "aaa": record("training", "Running", "Swimming", "Swimming"),  # majority Swimming
        "bbb": record("training", "Running", "Cooking"),  # tie: first annotated wins
        "ccc": record("validation", "Cooking"),
        "ddd": record("validation", "Running", "Running", "Cooking"),
        "eee": record("validation", "Swimming"),
        "fff": record("testing"),  # no annotations: unknown
    }
    return {"version": "VERSION 1.3", "taxonomy": TAXONOMY, "database": database}


def captions(*video_keys: str) -> dict:
    return {
        key: {
            "duration": 30.0,
            "timestamps": [[0.0, 5.0], [4.0, 12.5]],
            "sentences": [f"{key} first. ", f"{key} second."],
        }
        for key in video_keys
    }


@pytest.fixture()
def activitynet(tmp_path: Path):
    files = [
        write_json(
            tmp_path / "val_2.json", captions("v_ddd", "v_eee", "v_zzz")
        ),  # order on purpose
        write_json(tmp_path / "train.json", captions("v_aaa", "v_bbb")),
        write_json(tmp_path / "val_1.json", captions("v_ccc", "v_eee", "v_fff")),
    ]
    ground_truth = write_json(tmp_path / "activity_net.v1-3.min.json", ground_truth_document())
    videos = tmp_path / "videos"
    for name in ["v_aaa.mp4", "bbb.MP4", "v_CCC.mkv", "v_eee.webm"]:  # v_ddd missing
        touch(videos / name)
    return files, videos, ground_truth


def test_activitynet_labels_splits_and_unknown(activitynet):
    files, videos, ground_truth = activitynet
    with pytest.warns(UserWarning, match="v_zzz"):
        manifest = read_activitynet(files, str(videos), ground_truth=ground_truth)
    assert manifest.class_names == ["Cooking", "Running", "Swimming"]
    rows = {row.video_id: row for row in manifest.rows}
    assert {key: row.split for key, row in rows.items()} == {
        "v_aaa": "train",
        "v_bbb": "train",
        "v_ccc": "val",
        "v_eee": "val",
        "v_ddd": "test",
    }
    assert (rows["v_aaa"].label, rows["v_aaa"].labels) == (2, (1, 2))
    assert (rows["v_bbb"].label, rows["v_bbb"].labels) == (1, (0, 1))
    assert (rows["v_ddd"].label, rows["v_ddd"].labels) == (1, (0, 1))
    assert sorted(manifest.unknown) == ["v_fff", "v_zzz"]
    assert manifest.missing == ["v_ddd"] and rows["v_ddd"].path is None
    assert rows["v_bbb"].path == str(videos / "bbb.MP4")  # bare id found too
    assert rows["v_ccc"].captions == ("v_ccc first.", "v_ccc second.")
    assert rows["v_ccc"].segments == ((0.0, 5.0), (4.0, 12.5)) and rows["v_ccc"].duration == 30.0
    assert manifest.task == "single_label"


def test_activitynet_split_schemes_and_logged_sizes(activitynet, caplog):
    """official: train / val_1 / val_2 as train / val / test; paper: both val files are test.
    Each file's videos, where they go and val_2's overlap with val_1 are logged."""
    files, videos, ground_truth = activitynet
    with caplog.at_level(logging.INFO, logger="pipeline.ingest.manifest"):
        with pytest.warns(UserWarning):
            official = read_activitynet(files, str(videos), ground_truth=ground_truth)
    assert official.split_counts() == {"train": 2, "val": 2, "test": 1}
    assert "val_2.json: 3 videos -> test, 1 of them already in val_1 (kept there)" in caplog.text
    assert "val_1.json: 3 videos -> val" in caplog.text
    assert "train.json: 2 videos -> train" in caplog.text
    with pytest.warns(UserWarning):
        paper = read_activitynet(
            files, str(videos), ground_truth=ground_truth, split_scheme="paper"
        )
    splits = {row.video_id: row.split for row in paper.rows}
    assert splits == {"v_aaa": "train", "v_bbb": "train", "v_ccc": "test", "v_eee": "test",
                      "v_ddd": "test"}  # fmt: skip
    assert paper.split_counts() == {"train": 2, "val": 0, "test": 3}
    assert paper.split_counts(limit=3) == {"train": 2, "val": 0, "test": 1}
    with pytest.raises(ValueError, match="split_scheme"):
        read_activitynet(files, str(videos), ground_truth=ground_truth, split_scheme="x")


def test_activitynet_multi_label_task(activitynet):
    files, videos, ground_truth = activitynet
    with pytest.warns(UserWarning):
        manifest = read_activitynet(
            files, str(videos), ground_truth=ground_truth, task="multi_label"
        )
    assert manifest.task == "multi_label"
    table = manifest.to_table()
    labels = dict(zip(*table.select(["video_id", "labels"]).to_pydict().values(), strict=True))
    assert labels["v_aaa"] == [1, 2] and labels["v_eee"] == [2]


@pytest.mark.parametrize(
    ("file_name", "change", "entry"),
    [
        ("train.json", lambda d: d["v_aaa"].pop("timestamps"), "v_aaa"),
        ("train.json", lambda d: d["v_bbb"]["sentences"].append("extra"), "v_bbb"),
        ("val_1.json", lambda d: d.update(v_aaa=d["v_ccc"]), "v_aaa"),  # duplicate across files
        ("activity_net.v1-3.min.json", lambda d: d.pop("taxonomy"), "taxonomy"),
        ("activity_net.v1-3.min.json", lambda d: d["taxonomy"][2].pop("parentName"), "taxonomy[2]"),
        (
            "activity_net.v1-3.min.json",
            lambda d: d["database"]["aaa"]["annotations"].append({"label": "Sports"}),
            "aaa",
        ),
    ],
    ids=[
        "missing-timestamps",
        "length-mismatch",
        "duplicate",
        "no-taxonomy",
        "bad-node",
        "non-leaf-label",
    ],
)
def test_activitynet_bad_input_names_file_and_entry(activitynet, file_name, change, entry):
    files, videos, ground_truth = activitynet
    path = Path(ground_truth).parent / file_name
    document = json.loads(path.read_text())
    change(document)
    write_json(path, document)
    with pytest.raises(ManifestError) as error:
        read_activitynet(files, str(videos), ground_truth=ground_truth)
    assert file_name in str(error.value) and entry in str(error.value)


def test_activitynet_missing_or_malformed_ground_truth(activitynet):
    files, videos, ground_truth = activitynet
    with pytest.raises(ManifestError, match="missing.json"):
        read_activitynet(files, str(videos), ground_truth=ground_truth.with_name("missing.json"))
    ground_truth.write_text("[1, 2")
    with pytest.raises(ManifestError, match="activity_net.v1-3.min.json.*malformed"):
        read_activitynet(files, str(videos), ground_truth=ground_truth)


# ------------------------------------------------------------------ folders and archives


def test_read_folder_directory_and_glob(tmp_path):
    folder = tmp_path / "incoming"
    for name in ["a.mp4", "sub/B.MKV", "sub/deeper/c.webm", "notes.txt", "sub/a.mp4"]:
        touch(folder / name)
    with pytest.warns(UserWarning, match="repeated"):
        manifest = read_folder(str(folder))
    assert isinstance(manifest, Manifest) and manifest.skipped == 1
    assert sorted(row.video_id for row in manifest.rows) == ["B", "a", "a-2", "c"]
    assert {row.split for row in manifest.rows} == {"unlabeled"}
    assert all(row.label is None and Path(row.path).is_file() for row in manifest.rows)
    top_level = read_folder(str(folder / "*.mp4"))
    assert [row.video_id for row in top_level.rows] == ["a"]
    with pytest.warns(UserWarning, match="repeated"):
        everything = read_folder(str(folder / "**" / "*"))
    assert len(everything.rows) == 4 and everything.skipped == 1
    uri = read_folder(folder.as_uri() + "/sub/*.[mM][kK][vV]")
    assert [row.path for row in uri.rows] == [folder.as_uri() + "/sub/B.MKV"]


def test_read_folder_list_file(tmp_path):
    touch(tmp_path / "clips" / "one.mp4")
    touch(tmp_path / "two.MOV")
    lines = [
        "# scoring batch",
        "clips/one.mp4",
        str(tmp_path / "two.MOV"),
        "",
        "gone.mp4",
        "readme.md",
        (tmp_path / "clips" / "one.mp4").as_uri(),
    ]
    (tmp_path / "batch.lst").write_text("\n".join(lines))
    with pytest.warns(UserWarning, match="repeated"):
        manifest = read_folder(str(tmp_path / "batch.lst"))
    assert [row.video_id for row in manifest.rows] == ["one", "two", "gone", "one-2"]
    assert manifest.missing == ["gone"] and manifest.skipped == 1
    assert manifest.rows[0].path == str(tmp_path / "clips" / "one.mp4")


def build_hostile_archive(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as archive:
        directory = tarfile.TarInfo("clips")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("link.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_read_folder_tar_never_extracts_hostile_members(tmp_path, monkeypatch, suffix):
    token = uuid.uuid4().hex
    escape, absolute = f"../../evil-{token}.mp4", f"/tmp/crif-{token}.MP4"
    members = {
        "clips/v1.mp4": b"first video",
        escape: b"escape",
        absolute: b"absolute",
        "clips/readme.txt": b"not a video",
    }
    archive = tmp_path / f"batch{suffix}"
    build_hostile_archive(archive, members, "w:gz" if suffix == ".tar.gz" else "w")
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = sorted(os.walk(tmp_path))
    manifest = read_folder(str(archive))
    assert sorted(row.video_id for row in manifest.rows) == ["crif-" + token, "evil-" + token, "v1"]
    assert manifest.skipped == 2  # readme.txt and the symlink; the directory is not counted
    for row in manifest.rows:
        assert row.path.startswith(f"{archive}::") and "/" not in row.video_id
    assert sorted(os.walk(tmp_path)) == before
    assert not Path(f"/tmp/crif-{token}.MP4").exists()
    assert not (tmp_path / f"evil-{token}.mp4").exists()
    by_id = {row.video_id: row.path for row in manifest.rows}
    for video_id, content in [("v1", b"first video"), (f"evil-{token}", b"escape")]:
        with open_input(by_id[video_id]) as stream:
            assert stream.read() == content
    with pytest.raises(FileNotFoundError), open_input(f"{archive}::nothing.mp4"):
        pass


def test_read_folder_errors(tmp_path):
    with pytest.raises(ManifestError, match="nothing_here"):
        read_folder(str(tmp_path / "nothing_here"))
    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(ManifestError, match="fake.tar"):
        read_folder(str(tmp_path / "fake.tar"))


def test_real_sample_videos(shared_data):
    videos = shared_data / "videos"
    found = find_videos(str(videos))
    assert found["mmaction2_test"].endswith(".mp4")  # .mp4 ranks before .avi
    assert "v_ggsy1qvo990" in found
    with pytest.warns(UserWarning, match="repeated"):
        manifest = read_folder(str(videos))
    assert len(manifest.rows) == 4 and manifest.skipped == 0
    assert sorted(row.video_id for row in manifest.rows)[1:3] == [
        "mmaction2_test",
        "mmaction2_test-2",
    ]


def test_sources_layer_is_re_exported_by_manifest():
    import pipeline.ingest.manifest as manifest
    import pipeline.ingest.sources as sources

    for name in ("ARCHIVE_SEPARATOR", "VIDEO_EXTENSIONS", "ManifestError", "find_videos",
                 "open_input", "read_folder"):  # fmt: skip
        assert getattr(manifest, name) is getattr(sources, name), name
    # either module may be imported first (manifest imports sources, not the reverse)
    code = (
        "import pipeline.ingest.sources, pipeline.ingest.manifest; "
        "pipeline.ingest.sources.read_folder"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def build_archive(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))


def count_header_reads(monkeypatch) -> list[int]:
    """A one-element list that counts tarfile header reads (TarFile.next calls)."""
    calls = [0]
    original = tarfile.TarFile.next

    def counting(self):
        calls[0] += 1
        return original(self)

    monkeypatch.setattr(tarfile.TarFile, "next", counting)
    return calls


def test_uncompressed_tar_members_are_read_by_seeking_not_rescanning(tmp_path, monkeypatch):
    members = {f"clips/v{index:02d}.mp4": bytes([index]) * (700 + index) for index in range(40)}
    members["clips/" + "long-name-" * 12 + ".mp4"] = b"GNU/pax long name"  # extra header
    archive = tmp_path / "batch.tar"
    build_archive(archive, members)
    calls = count_header_reads(monkeypatch)
    manifest = read_folder(str(archive))
    assert len(manifest.rows) == 41
    for row in manifest.rows:
        with open_input(row.path) as stream:
            assert stream.read() == members[row.path.partition("::")[2]]
    # one pass over the headers for the listing and all reads (a rescan per member: ~900)
    assert calls[0] <= len(members) + 3
    with open_input(f"{archive}::clips/v07.mp4") as stream:  # seekable within the member
        stream.seek(-3, os.SEEK_END)
        assert stream.read() == bytes([7]) * 3 and stream.read() == b""
        stream.seek(0)
        assert stream.read(2) == bytes([7]) * 2 and stream.tell() == 2
    with (
        pytest.raises(FileNotFoundError, match="nothing.mp4"),
        open_input(f"{archive}::nothing.mp4"),
    ):
        pass


def test_tar_index_follows_a_rewritten_archive_and_uris(tmp_path):
    archive = tmp_path / "batch.tar"
    build_archive(archive, {"a.mp4": b"old"})
    with open_input(f"{archive}::a.mp4") as stream:
        assert stream.read() == b"old"
    build_archive(archive, {"b.mp4": b"padding", "a.mp4": b"new content"})
    with open_input(f"{archive}::a.mp4") as stream:  # the old index would point at b.mp4
        assert stream.read() == b"new content"
    with open_input(f"{archive.as_uri()}::a.mp4") as stream:
        assert stream.read() == b"new content"
    assert tar_index(str(archive)).by_name["a.mp4"].size == len(b"new content")


def test_compressed_tar_streams_and_non_files_are_refused(tmp_path):
    archive = tmp_path / "batch.tar.gz"
    build_archive(archive, {"a.mp4": b"first", "b.mp4": b"second"}, "w:gz")
    assert tar_index(str(archive)) is None
    with open_input(f"{archive}::b.mp4") as stream:
        assert stream.read() == b"second"
    plain = tmp_path / "links.tar"
    build_hostile_archive(plain, {"v.mp4": b"video"})
    for member in ("link.mp4", "clips"):
        with (
            pytest.raises(ManifestError, match="not a regular file"),
            open_input(f"{plain}::{member}"),
        ):
            pass
