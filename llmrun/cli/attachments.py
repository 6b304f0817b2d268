"""`llmrun chat -a PATH|URL|-`: images attached to the prompt.

An attachment is read by the command itself (a file, stdin, or an http(s) URL fetched
here), its kind told from its first bytes, and sent to the runner as image data; the
runner writes it where its tool reads it (a private file removed after the run) or
refuses it when its tool takes no images. Other kinds of file are refused, naming the
kinds taken.
"""

from __future__ import annotations

import base64
import mimetypes
import sys
from typing import BinaryIO

import typer

from ..errors import UnsupportedFeature
from ..types import ImagePart

MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
"""The largest attachment taken (as the daemon's limit for an image)."""
FETCH_TIMEOUT = 30.0
"""Seconds a URL's fetch may take."""

# An image's media type from its first bytes (file names and servers can be wrong).
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
TAKEN = "PNG, JPEG, GIF and WebP images"


def image_type(raw: bytes) -> str | None:
    """The media type of an image in a format runners take, from its bytes; None otherwise."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return next((media_type for signature, media_type in SIGNATURES if raw.startswith(signature)), None)


def read_attachments(specs: list[str], *, prompt: str | None, stdin: BinaryIO | None = None) -> list[ImagePart]:
    """Each `-a` value as an image; BadParameter when one cannot be read, UnsupportedFeature
    when one is not an image of a kind runners take."""
    if specs.count("-") > 1:
        raise typer.BadParameter("stdin (`-`) can be attached only once", param_hint="'--attachment'")
    if "-" in specs and prompt in (None, "-"):
        raise typer.BadParameter(
            "`-a -` reads the image from stdin, so the prompt must be given as an argument",
            param_hint="'--attachment'",
        )
    return [_image(spec, _read(spec, stdin)) for spec in specs]


def _read(spec: str, stdin: BinaryIO | None) -> bytes:
    if spec == "-":
        source = stdin if stdin is not None else _stdin_bytes()
        if source is None:
            raise typer.BadParameter("`-` attaches stdin, but stdin is a terminal", param_hint="'--attachment'")
        return _bounded(source.read(MAX_ATTACHMENT_BYTES + 1), "stdin")
    if spec.partition(":")[0].lower() in ("http", "https"):
        return _fetch(spec)
    try:
        with open(spec, "rb") as fh:
            return _bounded(fh.read(MAX_ATTACHMENT_BYTES + 1), spec)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {spec}: {exc.strerror}", param_hint="'--attachment'") from None


def _stdin_bytes() -> BinaryIO | None:
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.buffer


def _fetch(url: str) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=FETCH_TIMEOUT) as response:
            if response.status_code != 200:
                raise typer.BadParameter(f"{url} gave HTTP {response.status_code}", param_hint="'--attachment'")
            raw = bytearray()
            for chunk in response.iter_bytes():
                raw += chunk
                if len(raw) > MAX_ATTACHMENT_BYTES:
                    break
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"cannot fetch {url}: {exc}", param_hint="'--attachment'") from None
    return _bounded(bytes(raw), url)


def _bounded(raw: bytes, name: str) -> bytes:
    if len(raw) > MAX_ATTACHMENT_BYTES:
        limit = MAX_ATTACHMENT_BYTES // (1024 * 1024)
        raise typer.BadParameter(f"{name} is larger than {limit} MiB", param_hint="'--attachment'")
    if not raw:
        raise typer.BadParameter(f"{name} is empty", param_hint="'--attachment'")
    return raw


def _image(spec: str, raw: bytes) -> ImagePart:
    media_type = image_type(raw)
    if media_type is None:
        shown = "stdin" if spec == "-" else spec
        guessed = mimetypes.guess_type(spec)[0] if spec != "-" else None
        kind = f" ({guessed})" if guessed else ""
        raise UnsupportedFeature(
            f"{shown}{kind} is not an image that llmrun can attach; attachments are {TAKEN}",
            hint='put the text of other files in the prompt instead, e.g. `llmrun chat "..." < file`',
        )
    return ImagePart(data=base64.b64encode(raw).decode("ascii"), media_type=media_type)
