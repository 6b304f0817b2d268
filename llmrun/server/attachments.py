"""Images from clients of the daemon: data only, never a file or URL the server would open.

A client sends an image's bytes: a base64 `data:` URL in OpenAI's `image_url.url`, a
`base64` source in Anthropic's image blocks. They are decoded strictly (valid base64, an
image media type, at most MAX_IMAGE_BYTES) while the request is parsed, so a bad one is a
400 before any slot or process is taken. File paths, `file:` URLs and every other kind of
URL are refused with one message that never depends on what the server holds, so a client
learns nothing about its files; no tool ever sees a client's URL.

With `fetch_image_urls = true` in [server], http(s) URLs are allowed too, and llmrun itself
fetches them (`fetch_images`) before the request goes on: the host must resolve to public
addresses only (loopback, private, link-local and other special ranges are refused, and
the connection goes to the address that was checked), redirects are not followed, and
each fetch has a time limit and a size limit. What reaches a runner is always the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from typing import Any

import httpx

from ..errors import InvalidRequest, UnsupportedFeature
from ..images import IMAGE_SUFFIXES, decode_base64, is_data_url, split_data_url
from ..types import ChatRequest, ContentPart, ImagePart, Message
from .common import expect

MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""The largest image llmrun takes, decoded."""
FETCH_TIMEOUT = 20.0
"""Seconds one image fetch may take, name lookup to last byte."""

DATA_ONLY_HINT = "send the image's bytes as base64 data (a data:image/png;base64,... URL or a base64 source)"


def image_from_url(url: Any, where: str, *, fetch_image_urls: bool) -> ImagePart:
    """An OpenAI `image_url.url`: a base64 data: URL, or (when allowed) an http(s) URL to fetch."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: image_url needs a url")
    if is_data_url(url):
        try:
            media_type, data = split_data_url(url)
        except ValueError as exc:
            raise InvalidRequest(f"{where}: {exc}") from None
        return image_from_base64(data, media_type, where)
    return _remote(url, where, fetch_image_urls)


def image_from_source(source: Any, where: str, *, fetch_image_urls: bool) -> ImagePart:
    """An Anthropic image `source`: `base64`, or (when allowed) `url` with an http(s) URL."""
    source = expect(source, dict, f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        return image_from_base64(source.get("data"), source.get("media_type"), where)
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidRequest(f"{where}: an image source of type 'url' needs a url")
        return _remote(url, where, fetch_image_urls)
    raise UnsupportedFeature(f"{where}: image sources of type {kind!r} are not supported", hint=DATA_ONLY_HINT)


def image_from_base64(data: Any, media_type: Any, where: str) -> ImagePart:
    """An image given as base64 text and its media type, checked strictly."""
    if not isinstance(media_type, str) or media_type.lower() not in IMAGE_SUFFIXES:
        shown = repr(media_type) if isinstance(media_type, str) and len(media_type) <= 40 else "this"
        raise InvalidRequest(f"{where}: images of media type {shown} are not supported; use {_media_types()}")
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{where}: the image has no data")
    if len(data) > -(-MAX_IMAGE_BYTES // 3) * 4:  # checked before decoding anything
        raise InvalidRequest(f"{where}: the image is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        decode_base64(data)
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {exc}") from None
    return ImagePart(data=data, media_type=media_type.lower())


def _media_types() -> str:
    return ", ".join(IMAGE_SUFFIXES)


def _remote(url: str, where: str, fetch_image_urls: bool) -> ImagePart:
    # Neither the URL nor anything the server holds goes into the message: a refused path
    # reads the same whether or not the file exists.
    if fetch_image_urls and _scheme(url) in ("http", "https"):
        return ImagePart(url=url)  # fetched by `fetch_images` before anything runs
    allowed = "base64 data or http(s) URLs" if fetch_image_urls else "base64 data"
    raise InvalidRequest(
        f"{where}: images must be sent as {allowed}; this server opens no file paths or other URLs for a client",
        hint=DATA_ONLY_HINT,
    )


def _scheme(url: str) -> str:
    scheme, colon, rest = url.partition(":")
    return scheme.lower() if colon and rest.startswith("//") else ""


# --- fetching http(s) images, when the server allows it -------------------------------------


def public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether llmrun may fetch from this address: globally reachable ones only."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global


async def fetch_images(request: ChatRequest, *, max_total_bytes: int) -> ChatRequest:
    """The request with every http(s) image replaced by its fetched bytes (the parsers let
    such images through only where the server allows fetching). All fetched images together
    may hold at most `max_total_bytes`: a request brings in no more than it could send."""
    if not any(image.url is not None for message in request.messages for image in message.images):
        return request
    budget = [max_total_bytes]
    messages: list[Message] = []
    count = 0
    # No proxies from the environment: the connection must go to the address checked here.
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=FETCH_TIMEOUT) as client:
        for message in request.messages:
            if not message.images or isinstance(message.content, str):
                messages.append(message)
                continue
            parts: list[ContentPart] = []
            for part in message.content:
                if isinstance(part, ImagePart) and part.url is not None:
                    count += 1
                    part = await _fetch_in_time(client, part.url, f"image URL {count}", budget)
                parts.append(part)
            messages.append(message.model_copy(update={"content": parts}))
    return request.model_copy(update={"messages": messages})


async def _fetch_in_time(client: httpx.AsyncClient, url: str, where: str, budget: list[int]) -> ImagePart:
    try:
        return await asyncio.wait_for(_fetch(client, url, where, budget), FETCH_TIMEOUT)
    except asyncio.TimeoutError:
        raise InvalidRequest(f"{where}: fetching the image took longer than {FETCH_TIMEOUT:g} s") from None


async def _fetch(client: httpx.AsyncClient, url: str, where: str, budget: list[int]) -> ImagePart:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise InvalidRequest(f"{where}: the image URL is not valid") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise InvalidRequest(f"{where}: the image URL is not an http(s) URL")
    host = target.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS want it
    address = await _checked_address(host, target.port or (443 if target.scheme == "https" else 80), where)
    # Connect to the address that was checked (a second lookup could answer otherwise);
    # the Host header and TLS (SNI and certificate) still name the host of the URL.
    pinned = target.copy_with(host=address)
    # Bytes as sent, not compressed: the size limit then counts what is kept.
    headers = {
        "host": target.netloc.decode("ascii"),
        "accept": ", ".join(IMAGE_SUFFIXES),
        "accept-encoding": "identity",
    }
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    try:
        async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
            if response.is_redirect:
                raise InvalidRequest(f"{where}: the image URL redirects; llmrun does not follow redirects")
            if response.status_code != 200:
                raise InvalidRequest(f"{where}: fetching the image gave HTTP {response.status_code}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type not in IMAGE_SUFFIXES:
                raise InvalidRequest(f"{where}: the image URL did not give an image ({_media_types()})")
            if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
                raise InvalidRequest(f"{where}: the image URL gave compressed data; llmrun takes it uncompressed")
            limit = min(MAX_IMAGE_BYTES, budget[0])
            raw = bytearray()
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > limit:
                    raise InvalidRequest(f"{where}: the fetched image is larger than this request may bring in")
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{where}: the image could not be fetched ({type(exc).__name__})") from None
    if not raw:
        raise InvalidRequest(f"{where}: the image URL gave no data")
    budget[0] -= len(raw)
    return ImagePart(data=base64.b64encode(bytes(raw)).decode("ascii"), media_type=media_type)


async def _checked_address(host: str, port: int, where: str) -> str:
    """One address of the host, after checking that every address it has is public."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidRequest(f"{where}: the image URL's host could not be resolved") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    if not addresses or not all(public_address(address) for address in addresses):
        raise InvalidRequest(f"{where}: llmrun fetches images from public addresses only")
    return str(addresses[0])
