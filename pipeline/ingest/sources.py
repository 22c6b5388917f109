"""Where video bytes come from: local paths, pyarrow-filesystem URIs, folders, lists, tar archives.

The lower layer of :mod:`pipeline.ingest.manifest` (which re-exports everything public here):

    found = find_videos("s3://bucket/msrvtt/videos")     # video id -> location, one listing
    manifest = read_folder("incoming/batch.tar")          # unlabeled rows for scoring
    with open_input("incoming/batch.tar::clips/v1.mp4") as stream:
        data = stream.read()

An archive member is addressed as ``<archive.tar>::<member name>`` and read straight from the
archive, never extracted to disk. For an uncompressed tar (local or on a seekable filesystem)
each process indexes the archive's headers once (:func:`tar_index`: data offset and size of
every member, cached per archive, size and modification time) and then seeks to a member's
data directly, so reading all n members of an archive costs O(n) header reads, not O(n^2).
Compressed tars (``.tar.gz``, ``.tgz``, bzip2, xz) cannot be seeked into: they are still read
as a stream from the start for every member; repack large archives as plain ``.tar``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

import pyarrow.fs as pafs

from pipeline.ingest.records import Manifest, ManifestError, ManifestRow

__all__ = [
    "ARCHIVE_SEPARATOR",
    "VIDEO_EXTENSIONS",
    "ManifestError",
    "TarIndex",
    "find_videos",
    "open_input",
    "read_folder",
    "tar_index",
]

# Every container FFmpeg reads that users hold videos in; on a tie (one id, two files) the
# earlier extension wins.
VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".m4v",
    ".ts",
    ".m2ts",
    ".mts",
    ".3gp",
    ".flv",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".ogv",
    ".mxf",
)
ARCHIVE_SEPARATOR = "::"  # "<archive.tar>::<member name>" addresses one member of an archive
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_LIST_SUFFIXES = (".txt", ".lst")
_INDEXED_ARCHIVES = 64  # tar indexes a process keeps (least recently used are dropped)


# ------------------------------------------------------------------------ filesystems


def _is_uri(location: str) -> bool:
    return "://" in location


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it; local paths become absolute."""
    if _is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def _join(root: str, relative: str) -> str:
    """``root/relative`` for a local path or a URI (keeping any ``?query`` at the end)."""
    if not _is_uri(root):
        return os.path.join(os.path.abspath(root), relative)
    base, separator, query = root.partition("?")
    return f"{base.rstrip('/')}/{relative}{separator}{query}"


def _list_files(root: str, *, recursive: bool) -> list[tuple[str, str]]:
    """(relative path, location) of every file under ``root``: one listing, sorted."""
    filesystem, base = _resolve(root)
    selector = pafs.FileSelector(base, recursive=recursive)
    try:
        infos = filesystem.get_file_info(selector)
    except (FileNotFoundError, NotADirectoryError, OSError) as error:
        raise ManifestError(f"{root}: cannot list video directory: {error}") from error
    base = base.rstrip("/")
    # Unknown: special files (a named pipe): listed, so the decode step records what they do.
    readable = (pafs.FileType.File, pafs.FileType.Unknown)
    relatives = sorted(
        info.path[len(base) :].lstrip("/") for info in infos if info.type in readable
    )
    return [(relative, _join(root, relative)) for relative in relatives]


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def find_videos(root: str) -> dict[str, str]:
    """Map lower-cased video id to the path or URI of ``<root>/<video_id>.<ext>``.

    Any video extension in any case matches; when one id has several files the one whose
    extension comes first in :data:`VIDEO_EXTENSIONS` wins, so the choice is stable.
    """
    found: dict[str, tuple[int, str]] = {}
    for relative, location in _list_files(str(root), recursive=False):
        stem, extension = os.path.splitext(relative)
        if extension.lower() not in VIDEO_EXTENSIONS:
            continue
        rank = VIDEO_EXTENSIONS.index(extension.lower())
        key = stem.lower()
        if key not in found or rank < found[key][0]:
            found[key] = (rank, location)
    return {key: location for key, (_, location) in found.items()}


# ---------------------------------------------------------------------- tar archives


@dataclass(frozen=True)
class TarIndex:
    """The headers of an uncompressed tar: members in archive order, first of each name."""

    members: tuple[tarfile.TarInfo, ...]
    by_name: dict[str, tarfile.TarInfo]


def _stamp(location: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a file, so a rewritten archive is indexed again; None if absent."""
    filesystem, inner = _resolve(location)
    info = filesystem.get_file_info(inner)
    if info.type != pafs.FileType.File:
        return None
    return info.size or 0, info.mtime_ns or 0


def tar_index(archive: str) -> TarIndex | None:
    """The header index of an uncompressed tar, or None for a compressed or unreadable one.

    Built once per process and archive version with seeks from header to header (no member
    data is read); a missing archive raises FileNotFoundError.
    """
    stamp = _stamp(archive)
    if stamp is None:
        raise FileNotFoundError(f"{archive}: archive not found")
    return _cached_tar_index(archive, stamp)


@functools.lru_cache(maxsize=_INDEXED_ARCHIVES)
def _cached_tar_index(archive: str, stamp: tuple[int, int]) -> TarIndex | None:
    del stamp  # part of the cache key only
    with open_input(archive) as raw:
        if not raw.seekable() or _is_compressed(raw):
            return None
        try:
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                members = tuple(tar)  # seeks header to header, skipping the data
        except tarfile.TarError:
            return None  # the streaming reader reports the error with its own message
    by_name: dict[str, tarfile.TarInfo] = {}
    for member in members:
        by_name.setdefault(member.name, member)  # the first of a name, as streaming finds it
    return TarIndex(members, by_name)


def _is_compressed(raw: BinaryIO) -> bool:
    magic = raw.read(6)
    raw.seek(0)
    return magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))


class _MemberFile(io.RawIOBase):
    """A read-only window ``[offset, offset + size)`` of a seekable stream."""

    def __init__(self, raw: BinaryIO, offset: int, size: int):
        super().__init__()
        self._raw, self._offset, self._size, self._position = raw, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = max(0, self._size - self._position)
        count = remaining if size is None or size < 0 else min(size, remaining)
        if count == 0:
            return b""
        self._raw.seek(self._offset + self._position)
        data = self._raw.read(count)  # one read: a single range request on object stores
        self._position += len(data)
        return bytes(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextlib.contextmanager
def _open_member(archive: str, member_name: str) -> Iterator[BinaryIO]:
    index = tar_index(archive)
    if index is not None:  # uncompressed: seek straight to the member's data
        member = index.by_name.get(member_name)
        if member is None:
            raise FileNotFoundError(f"{archive}: no member named {member_name!r}")
        if not member.isreg() or member.issparse():
            raise ManifestError(f"{archive}: member {member_name!r} is not a regular file")
        with open_input(archive) as raw:
            yield _MemberFile(raw, member.offset_data, member.size)
        return
    with open_input(archive) as raw, tarfile.open(fileobj=raw, mode="r|*") as archive_file:
        for member in archive_file:  # compressed: read the stream up to the member
            if member.name != member_name:
                continue
            member_file = archive_file.extractfile(member)
            if member_file is None:
                raise ManifestError(f"{archive}: member {member_name!r} is not a file")
            yield member_file
            return
    raise FileNotFoundError(f"{archive}: no member named {member_name!r}")


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open a local path, a pyarrow-filesystem URI or an ``<archive.tar>::<member>`` for reading.

    Archive members are read from the archive itself (never extracted to disk), so a hostile
    member name cannot write anywhere; the member's file object is only valid inside the
    ``with`` block. Members of uncompressed tars are seekable; of compressed ones, forward-only.
    """
    path = str(path)
    if ARCHIVE_SEPARATOR in path:
        archive, _, member_name = path.partition(ARCHIVE_SEPARATOR)
        with _open_member(archive, member_name) as member_file:
            yield member_file
        return
    if _is_uri(path):
        filesystem, inner = pafs.FileSystem.from_uri(path)
        with filesystem.open_input_file(inner) as stream:
            yield stream
        return
    with open(path, "rb") as stream:
        yield stream


# ---------------------------------------------------------------- folders, lists, archives


def _video_id_from_name(name: str) -> str:
    """The id of a video named by a file or archive member: its sanitised stem, never a path."""
    base = PurePosixPath(name.replace("\\", "/")).name
    stem = base[: -len(os.path.splitext(base)[1]) or None]
    return re.sub(r"[^\w.\-]+", "_", stem).strip(".") or "video"


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob as a regex on '/'-separated paths: ``*``, ``?``, ``[..]``, ``**``."""
    pieces = []
    for piece in re.split(r"(\*\*/?|\*|\?|\[[^\]/]+\])", pattern):
        if piece in ("**/", "**"):
            pieces.append("(?:.*/)?" if piece == "**/" else ".*")
        elif piece in ("*", "?"):
            pieces.append("[^/]*" if piece == "*" else "[^/]")
        elif piece.startswith("[") and piece.endswith("]"):
            inner = piece[1:-1]
            pieces.append("[" + ("^" + inner[1:] if inner.startswith("!") else inner) + "]")
        else:
            pieces.append(re.escape(piece))
    return re.compile("".join(pieces))


def _glob_files(pattern: str) -> list[str]:
    """Locations matching a glob: one listing of the directory above the first wildcard."""
    first = min(index for index, char in enumerate(pattern) if char in "*?[")
    cut = pattern.rfind("/", 0, first)
    root, rest = (pattern[:cut] or "/", pattern[cut + 1 :]) if cut >= 0 else (".", pattern)
    regex = _glob_regex(rest)
    listing = _list_files(root, recursive="/" in rest or "**" in rest)
    return [location for relative, location in listing if regex.fullmatch(relative)]


def _list_file_entries(source: str) -> list[tuple[str, bool]]:
    """(location, exists) per line of a path list; local entries are checked, URIs trusted."""
    with open_input(source) as stream:
        lines = stream.read().decode("utf-8").splitlines()
    directory = "" if _is_uri(source) else os.path.dirname(os.path.abspath(source))
    entries = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        if _is_uri(line) or ARCHIVE_SEPARATOR in line:
            entries.append((line, True))
        else:
            location = os.path.join(directory, line) if directory else line
            entries.append((os.path.abspath(location), os.path.isfile(location)))
    return entries


def _archive_members(source: str) -> Iterator[tarfile.TarInfo]:
    """Every member header: from the index (uncompressed) or one streaming pass."""
    index = tar_index(source)
    if index is not None:
        yield from index.members
        return
    with open_input(source) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        yield from tar


def _archive_entries(source: str) -> tuple[list[str], int]:
    """``<archive>::<member>`` of each video member, never extracted; skipped count."""
    archive = source if _is_uri(source) else os.path.abspath(source)
    locations, skipped = [], 0
    try:
        for member in _archive_members(archive):
            if member.isdir():
                continue
            if member.isfile() and _is_video(member.name):
                locations.append(f"{archive}{ARCHIVE_SEPARATOR}{member.name}")
            else:
                skipped += 1
    except FileNotFoundError as error:
        raise ManifestError(f"{source}: archive not found") from error
    except tarfile.TarError as error:
        raise ManifestError(f"{source}: not a readable tar archive: {error}") from error
    return locations, skipped


def _folder_entries(source: str) -> list[tuple[str, bool]]:
    """(location, exists) of every entry of a directory, glob, list file or single video."""
    path_part = source.split("?")[0] if _is_uri(source) else source
    if any(char in path_part for char in "*[") or (not _is_uri(source) and "?" in source):
        return [(location, True) for location in _glob_files(path_part)]
    if path_part.lower().endswith(_LIST_SUFFIXES):
        try:
            return _list_file_entries(source)
        except FileNotFoundError as error:
            raise ManifestError(f"{source}: list file not found") from error
    filesystem, inner = _resolve(source)
    info = filesystem.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        return [(location, True) for _, location in _list_files(source, recursive=True)]
    if info.type == pafs.FileType.File:
        return [(source if _is_uri(source) else os.path.abspath(source), True)]
    raise ManifestError(f"{source}: no such directory, glob, list file, archive or video")


def read_folder(source: str) -> Manifest:
    """Unlabeled rows for scoring: a directory tree, glob, ``.txt``/``.lst`` list or ``.tar``.

    Only video files (by extension, any case) become rows; other entries are counted in
    ``Manifest.skipped``. The video id is the file stem; archive members are listed from the
    tar headers and never extracted, and their ids are sanitised stems, never paths. Repeated
    stems get ``-2``, ``-3``... suffixes (with a warning) so ids stay unique.
    """
    # Imported here: pipeline.ingest.manifest imports this module (it re-exports its names).

    source = str(source)
    if source.split("?")[0].lower().endswith(_ARCHIVE_SUFFIXES):
        locations, skipped = _archive_entries(source)
        entries = [(location, True) for location in locations]
    else:
        everything = _folder_entries(source)
        entries = [(location, exists) for location, exists in everything if _is_video(location)]
        skipped = len(everything) - len(entries)
    rows, missing, used, renamed = [], [], set(), 0
    for location, exists in entries:
        name = (
            location.rpartition(ARCHIVE_SEPARATOR)[2] if ARCHIVE_SEPARATOR in location else location
        )
        video_id = base_id = _video_id_from_name(name.split("?")[0])
        suffix = 1
        while video_id in used:
            suffix += 1
            video_id = f"{base_id}-{suffix}"
        renamed += suffix > 1
        used.add(video_id)
        if not exists:
            missing.append(video_id)
        rows.append(ManifestRow(video_id, location if exists else None, "unlabeled", None))
    if renamed:
        warnings.warn(f"{source}: {renamed} repeated video name(s) got -N suffixes", stacklevel=2)
    name = PurePosixPath(source.split("?")[0].rstrip("/")).name or source
    return Manifest(name, "single_label", [], rows, missing, skipped=skipped)
