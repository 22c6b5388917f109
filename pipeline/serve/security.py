"""What the live service lets in: the bearer token, the stream URLs it opens, its limits.

    digest = token_digest(read_token(token_file))   # sha256 hex: all the replicas ever see
    authorized(request.headers.get("authorization"), digest)   # constant-time compare
    url = check_stream_url("rtsp://user:secret@10.0.0.5/stream1")   # raises UnsafeURL
    redact_url(url)                                  # "rtsp://user:***@10.0.0.5/stream1"

The token is read from ``CRIF_SERVE_TOKEN`` or a file, hashed once, and only its sha256 goes
into the Serve application (its arguments are stored by the Serve controller and shown by
``serve status``); a request is let in when the sha256 of its bearer token matches.

A stream URL must use a network scheme (:data:`ALLOWED_SCHEMES`) with a host. FFmpeg opens many
more things from a URL string (``file:``, bare paths, ``concat:``, ``subfile:``, ``pipe:``,
``data:``...), some of which read the server's own files; they are refused here, and the
decoder is opened with FFmpeg's ``protocol_whitelist`` (:data:`PROTOCOL_WHITELIST`) as a
second lock, so a playlist or SDP fetched over the network cannot point FFmpeg at a local
file either. The resolution limit is batch decoding's (``pipeline.decode.MAX_PIXELS``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
from urllib.parse import urlsplit, urlunsplit

from pipeline.decode.backends import MAX_PIXELS

__all__ = [
    "ALLOWED_SCHEMES",
    "CAMERA_PATTERN",
    "MAX_PIXELS",
    "MAX_URL_LENGTH",
    "MIN_TOKEN_LENGTH",
    "PROTOCOL_WHITELIST",
    "TOKEN_ENV",
    "UnsafeURL",
    "authorized",
    "check_camera",
    "check_stream_url",
    "is_loopback",
    "read_token",
    "redact_url",
    "token_digest",
]

TOKEN_ENV = "CRIF_SERVE_TOKEN"
MIN_TOKEN_LENGTH = 16  # a shorter token is refused at start (guessable)
# Stream URL schemes: RTSP (and over TLS), RTP, UDP (MPEG-TS), SRT, HTTP(S) (MJPEG, HLS, TS).
ALLOWED_SCHEMES = ("rtsp", "rtsps", "rtp", "udp", "srt", "http", "https")
# What FFmpeg may open while reading a stream: the schemes and the transports under them
# (tls, tcp; crypto for AES-128 HLS segments, whose inner URL is checked against this too).
PROTOCOL_WHITELIST = ",".join((*ALLOWED_SCHEMES, "tcp", "tls", "crypto", "httpproxy"))
MAX_URL_LENGTH = 2048
CAMERA_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UnsafeURL(ValueError):
    """A stream URL the service will not open; the message says why."""


def read_token(token_file: str | None = None) -> str | None:
    """The API token: the file's first line when given, else ``CRIF_SERVE_TOKEN``, else None.
    A token shorter than MIN_TOKEN_LENGTH is refused (ValueError)."""
    if token_file:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.readline().strip()
        source = token_file
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        source = TOKEN_ENV
    if not token:
        if token_file:
            raise ValueError(f"the token file {token_file} is empty")
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token in {source} is shorter than {MIN_TOKEN_LENGTH} characters")
    return token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authorized(header: str | None, digest: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token of ``digest`` (None: no auth)."""
    if digest is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token_digest(token.strip()), digest)


def check_camera(camera: str) -> str:
    if not isinstance(camera, str) or not CAMERA_PATTERN.match(camera):
        raise ValueError("camera must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return camera


def check_stream_url(url: str) -> str:
    """``url`` when it is a network stream URL the service may open; else UnsafeURL."""
    if not isinstance(url, str) or not url:
        raise UnsafeURL("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"url longer than {MAX_URL_LENGTH} characters")
    if any(ord(character) < 33 or ord(character) == 127 for character in url):
        raise UnsafeURL("url contains whitespace or control characters")
    scheme, separator, _ = url.partition("://")
    if not separator or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        # file paths, concat:, subfile,,...:, pipe:, data: and friends have no "scheme://"
        raise UnsafeURL(f"not a network URL (scheme://host...): {redact_url(url)[:80]}")
    if scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeURL(f"scheme {scheme!r} is not allowed; use one of {list(ALLOWED_SCHEMES)}")
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as error:
        raise UnsafeURL(f"malformed url: {error}") from error
    if not host:
        raise UnsafeURL("url has no host")
    return url


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for listings and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<malformed url>"


def is_loopback(host: str) -> bool:
    """Whether binding to ``host`` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
