"""open_backend(url): pick a backend by URL scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from ._memory import MemoryBackend
from .abc import Backend

__all__ = ["open_backend", "redact_url"]

SCHEMES = ("memory", "sqlite", "nats", "tls")


def redact_url(url: str) -> str:
    """*url* with any password or token replaced by ``***``. Never raises.

    Credentials end at the last ``@`` of what follows the scheme (hosts and bucket
    names never contain one, a password may even hold an unescaped ``/``), so this
    works where :func:`urllib.parse.urlsplit` gives up: several hosts
    (``nats://u:p@h1:1,h2:2``), IPv6 hosts, out-of-range ports.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/") or "@" not in rest:
        return url
    userinfo, _, hosts = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{hosts}" if colon else f"{scheme}://***@{hosts}"


@asynccontextmanager
async def open_backend(url: str) -> AsyncIterator[Backend]:
    """Open the backend that *url* names and make it the default for the block.

    - ``memory://`` -- a fresh :class:`MemoryBackend` (each call its own store);
    - ``sqlite:///path/to/file.db`` -- :func:`open_sqlite_backend` (absolute path;
      ``sqlite://relative.db`` is relative to the working directory);
    - ``nats://host:port/bucket`` (``tls://`` too) -- :func:`open_nats_backend`;
      the bucket defaults to ``noleader``, and ``user:password@`` or ``token@``
      in the URL are passed to the server.

    Raises:
        ValueError: for an unknown scheme or a malformed URL (before any I/O).
        BackendUnavailable: if the store cannot be reached.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}: {url!r:.80}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed backend URL {redact_url(url)[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        async with MemoryBackend() as backend:
            yield backend
    elif scheme == "sqlite":
        from ._sqlite import open_sqlite_backend, path_from_url

        async with open_sqlite_backend(path_from_url(url)) as backend:
            yield backend
    elif scheme in ("nats", "tls"):
        from ._nats import open_nats_backend_from_url

        async with open_nats_backend_from_url(url) as backend:
            yield backend
    else:
        raise ValueError(
            f"unknown backend URL {redact_url(url)[:200]!r}: the scheme must be one of "
            "memory://, sqlite:///path, nats://host:port/bucket"
        )
