"""Images of a request as bytes, and the private files a tool reads them from.

An image given as data (`ImagePart.data`, or a `data:` URL) is decoded strictly and
written to a file of its own (mode 0600) in llmrun's private directory (mode 0700, see
llmrun/private.py); the runner lists the file in its invocation's temp files, so it goes
when the run ends. Images given as other URLs or paths are the caller's business:
the library passes them on where a tool takes them, and the daemon never lets a client
send one (see llmrun/server/attachments.py).
"""

from __future__ import annotations

import base64
import binascii
import os

from . import private
from .errors import UnsupportedFeature
from .types import ImagePart

# The media types both APIs document for images, with the file suffix tools recognise.
IMAGE_SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def split_data_url(url: str) -> tuple[str, str]:
    """(media type, base64 text) of a `data:[TYPE][;param…];base64,DATA` URL; ValueError otherwise."""
    header, comma, data = url.partition(",")
    media_type, *params = header[5:].split(";")
    if not is_data_url(header) or not comma or not params or params[-1].strip().lower() != "base64":
        raise ValueError("the image is not a base64 data: URL (data:TYPE;base64,DATA)")
    return media_type.strip().lower(), data


def decode_base64(data: str) -> bytes:
    """The bytes of standard base64 text; ValueError for anything else (whitespace included)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the image data is not valid base64 ({exc})") from None


def image_bytes(image: ImagePart) -> tuple[bytes, str | None]:
    """(bytes, media type) of an image given as data or as a `data:` URL; ValueError otherwise."""
    if image.url is not None:
        media_type, data = split_data_url(image.url)
        return decode_base64(data), media_type or image.media_type
    return decode_base64(image.data or ""), image.media_type


def write_image_file(raw: bytes, suffix: str) -> str:
    """A new file (mode 0600) in llmrun's private directory holding `raw`; its path."""
    return private.write_file(raw, prefix="image-", suffix=suffix)


def image_data(image: ImagePart, runner: str) -> tuple[str, str]:
    """(media type, base64 text) of an image given as data, checked; UnsupportedFeature for
    an image given as a URL or path (llmrun's tools read images from data llmrun wrote)."""
    if image.url is not None and not is_data_url(image.url):
        raise UnsupportedFeature("images are taken as data, not as URLs or paths", runner=runner)
    try:
        raw, media_type = image_bytes(image)
    except ValueError as exc:
        raise UnsupportedFeature(str(exc), runner=runner) from None
    media_type = (media_type or "").lower()
    if media_type not in IMAGE_SUFFIXES:
        raise UnsupportedFeature(
            f"images of media type {media_type or 'unknown'!r} are not supported; use {', '.join(IMAGE_SUFFIXES)}",
            runner=runner,
        )
    return media_type, base64.b64encode(raw).decode("ascii")


def private_image_file(image: ImagePart, runner: str) -> str:
    """A private file (mode 0600) holding an image given as data, named with its suffix;
    the runner lists it in its invocation's temp files, so it goes when the run ends."""
    media_type, data = image_data(image, runner)
    return write_image_file(base64.b64decode(data), IMAGE_SUFFIXES[media_type])


def private_image_directory(images: list[ImagePart], runner: str) -> tuple[str, list[str]]:
    """A new private directory (mode 0700) holding only these images, and their paths: for
    tools that read files only inside directories they are given (gemini, qwen) or allowed
    (opencode's permission rules), so that nothing else of llmrun's is readable there."""
    decoded = [image_data(image, runner) for image in images]  # all checked before any file is written
    folder = private.mkdtemp(prefix="images-", for_run=True)
    paths = []
    for number, (media_type, data) in enumerate(decoded, 1):
        path = os.path.join(folder, f"image-{number}{IMAGE_SUFFIXES[media_type]}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(data))
        paths.append(path)
    return folder, paths


def at_references(paths: list[str]) -> str:
    """`@path` references, as gemini and qwen read files named in a prompt (spaces escaped)."""
    return " ".join("@" + path.replace("\\", "\\\\").replace(" ", "\\ ") for path in paths)
