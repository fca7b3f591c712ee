"""Backend URLs: parsing and redaction. Pure: no I/O, no optional imports.

``open_backend`` validates a URL here before it imports the module (and the
optional extra) that serves it, so a malformed URL is a ``ValueError`` even where
the extra is not installed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ._types import type_error

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_TABLE",
    "SCHEMES",
    "Default",
    "check_bucket_name",
    "check_table_name",
    "dsn_address",
    "dsn_secrets",
    "merge_server_settings",
    "parse_nats_url",
    "parse_postgres_url",
    "parse_sqlite_url",
    "path_from_url",
    "redact_url",
    "scheme_of",
    "scrub",
]

#: The URL schemes ``open_backend`` serves, and the kind of backend of each.
SCHEMES = {"memory": "memory", "sqlite": "sqlite", "nats": "nats", "tls": "nats",
           "postgresql": "postgres", "postgres": "postgres"}

#: The bucket of a NATS URL (or ``open_nats_backend``) that names none.
DEFAULT_BUCKET = "noleader"

#: The longest bucket name: its stream, ``KV_<bucket>``, may have 255 characters.
MAX_BUCKET_LENGTH = 252

_BUCKET_RE = re.compile(r"[a-zA-Z0-9_-]+")

#: How much of a bad URL an error message quotes.
SHOWN_LENGTH = 200


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


def scheme_of(url: object) -> str:
    """The kind of backend a URL names (``memory``, ``sqlite``, ``nats``, ``postgres``).

    Raises:
        TypeError: if *url* is not a str.
        ValueError: for a malformed URL or an unknown scheme (the message shows the
            URL with any secret redacted).
    """
    if not isinstance(url, str):
        raise type_error("url", url, "a str")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ValueError(
            f"malformed backend URL {redact_url(url)[:SHOWN_LENGTH]!r}: {exc}") from None
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown backend URL {redact_url(url)[:SHOWN_LENGTH]!r}: the scheme must be one "
            "of memory://, sqlite:///path, nats://host:port/bucket, postgresql://host/db"
        )
    return SCHEMES[scheme]


# -- SQLite ---------------------------------------------------------------------

_URL_FORMS = "sqlite:///absolute/path.db, sqlite://relative/path.db or sqlite:relative.db"


def path_from_url(url: str) -> str:
    """Return the file path that a ``sqlite:`` URL names (see :func:`parse_sqlite_url`)."""
    return parse_sqlite_url(url)[0]


def parse_sqlite_url(url: str) -> tuple[str, dict[str, Any]]:
    """Split a ``sqlite:`` URL into the file path and options for ``open_sqlite_backend``.

    ``sqlite:///abs/path.db`` gives ``/abs/path.db``; ``sqlite://rel.db`` and
    ``sqlite:rel.db`` give the relative path ``rel.db`` (relative to the working
    directory when the backend opens). Percent-escapes are decoded; ``~`` is not
    expanded. The one query parameter is ``new_store_grace`` (``on``/``off``).

    Raises:
        TypeError: if *url* is not a str.
        ValueError: if *url* is not a ``sqlite:`` URL naming a file: another scheme,
            no path, a path ending in ``/``, a user or password, an unknown query
            parameter or a fragment.
    """
    if not isinstance(url, str):
        raise type_error("url", url, "a str")

    def malformed(why: str) -> ValueError:
        return ValueError(f"malformed SQLite URL {url!r}: {why}; expected {_URL_FORMS}")

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise malformed(str(exc)) from None
    if parts.scheme.lower() != "sqlite":
        raise malformed("the scheme must be sqlite")
    if parts.fragment or url.endswith("#"):
        raise malformed("fragments are not supported")
    if "@" in parts.netloc:
        raise malformed("SQLite takes a file path, not a user, password or host")
    options: dict[str, Any] = {}
    if url.endswith("?") and not parts.query:
        raise malformed("an empty query string")
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name != "new_store_grace":
            raise malformed(f"unknown parameter {name!r} (known: new_store_grace)")
        options[name] = _flag(name, value, malformed)
    # With "//", urlsplit puts the first path segment of a relative path in netloc.
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise malformed("it names no file")
    if path.endswith("/"):
        raise malformed(f"the path {path!r} names a directory, not a database file")
    if "\x00" in path:
        raise malformed("the path contains a NUL character")
    return path, options


def _flag(name: str, value: str, error: Callable[[str], ValueError]) -> bool:
    """A boolean URL parameter: on/off, true/false, yes/no, 1/0."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise error(f"{name}={value!r} is none of on, off, true, false, yes, no, 1, 0")



# -- NATS -----------------------------------------------------------------------


def check_bucket_name(bucket: object) -> str:
    if not isinstance(bucket, str):
        raise type_error("bucket", bucket, "a str")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(
            f"invalid bucket name {bucket!r:.80}: NATS KV bucket names are 1 or more of the "
            "characters A-Z a-z 0-9 _ -"
        )
    if len(bucket) > MAX_BUCKET_LENGTH:
        raise ValueError(
            f"bucket name {bucket[:40]!r}... is {len(bucket)} characters long; NATS KV "
            f"bucket names are at most {MAX_BUCKET_LENGTH} characters (the stream name "
            "KV_<bucket> at most 255)")
    return bucket


def parse_nats_url(url: str) -> tuple[list[str], str, dict[str, Any]]:
    """Split ``nats://[user:password@|token@]host[:port][,host...][/bucket]``.

    Returns:
        tuple: ``(servers, bucket, options)``: server URLs without credentials, the
        bucket (default ``noleader``), and keyword arguments for
        :func:`open_nats_backend` (``user``/``password`` or ``token``, plus the
        query parameters ``replicas`` and ``storage``).

    Raises:
        ValueError: for a malformed URL (the message never shows a secret).
    """
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {shown!r} (expected nats://host:port/bucket)")
    # Hosts and bucket names never contain "@": the last one ends the credentials.
    userinfo, at, after = rest.rpartition("@")
    hostlist, slash, tail = after.partition("/")
    hostlist, question, query = hostlist.partition("?")
    parts = urlsplit(f"x:///{tail}" if slash else f"x:///?{query}" if question else "x:///")
    if parts.fragment or "#" in hostlist:
        raise ValueError(f"NATS URL {shown!r}: a fragment (#...) means nothing here")
    options: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            options["user"] = unquote(user)
            options["password"] = unquote(password)
        elif user:
            options["token"] = unquote(user)
    servers = []
    for host in hostlist.split(","):
        try:
            hostport = urlsplit(f"{scheme}://{host}")
            port = hostport.port or 4222
        except ValueError:
            raise ValueError(f"NATS URL {shown!r}: bad host or port {host!r}") from None
        if not hostport.hostname:
            raise ValueError(f"NATS URL {shown!r}: no host")
        name = hostport.hostname
        servers.append(f"{scheme}://{f'[{name}]' if ':' in name else name}:{port}")
    path = unquote(parts.path.strip("/"))
    bucket = path or DEFAULT_BUCKET
    try:
        check_bucket_name(bucket)
    except ValueError as exc:
        raise ValueError(
            f"NATS URL {shown!r:.120}: the path must be a bucket name, like "
            f"nats://host:4222/noleader: {exc}") from None
    options.update(_query_options(shown, parts.query))
    return servers, bucket, options


def _query_options(shown: str, query: str) -> dict[str, Any]:
    """The bucket options of a NATS URL's query string (``?replicas=3&storage=memory``)."""
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "replicas":
            try:
                options["replicas"] = int(value)
            except ValueError:
                raise ValueError(f"NATS URL {shown!r}: replicas={value!r} is no int") from None
        elif name == "storage":
            options["storage"] = value
        elif name == "new_store_grace":
            options[name] = _flag(name, value,
                                  lambda why: ValueError(f"NATS URL {shown!r}: {why}"))
        else:
            raise ValueError(
                f"NATS URL {shown!r}: unknown parameter {name!r} "
                "(known: replicas, storage, new_store_grace)")
    return options


class Default(str):
    """A keyword default that can be told from the same value passed explicitly.

    ``open_nats_backend(servers, bucket=...)``'s default is ``Default("noleader")``:
    it prints and compares as ``"noleader"``, but a bucket named in a server URL
    may replace it, while an explicit ``bucket="noleader"`` must agree with the URL.
    """

    __slots__ = ()


def merge_server_settings(servers: list[str], given: dict[str, Any]
                          ) -> tuple[list[str], dict[str, Any]]:
    """Take the bucket (path) and options (query) off NATS server URLs; merge with *given*.

    ``nats://host:4222/apps?replicas=3`` names a bucket and a bucket option as well
    as a server. nats-py ignores both, so a replica that spelt its store that way
    would silently use another bucket than one that said ``bucket="apps"``: two
    elections, two leaders. Here a URL's setting replaces a keyword left at its
    default (a :class:`Default` value), and must equal one passed explicitly.

    Args:
        servers: Server URLs, as given (credentials in them stay).
        given: ``bucket``, ``replicas`` and ``storage`` as passed; a value that is
            a :class:`Default` (or ``None``) was not passed.

    Returns:
        tuple: the server URLs without path or query, and the merged settings.

    Raises:
        ValueError: if a URL disagrees with an explicit keyword or another URL,
            naming both values (never a secret), or a URL's path or query is bad.
    """
    merged = dict(given)
    source = {name: f"{name}={value!r}" for name, value in given.items()
              if value is not None and not isinstance(value, Default)}
    stripped = []
    for server in servers:
        scheme, sep, rest = server.partition("://")
        if not sep:
            stripped.append(server)
            continue
        userinfo, at, after = rest.rpartition("@")
        hosts, slash, tail = after.partition("/")
        hosts, _, query = hosts.partition("?")
        path, _, tail_query = tail.partition("?")
        stripped.append(f"{scheme}://{userinfo}{at}{hosts}")
        shown = redact_url(server)
        found = _query_options(shown, tail_query if slash else query)
        bucket = unquote(path.strip("/"))
        if bucket:
            try:
                check_bucket_name(bucket)
            except ValueError as exc:
                raise ValueError(
                    f"NATS URL {shown!r:.120}: the path must be a bucket name, like "
                    f"nats://host:4222/noleader: {exc}") from None
            found["bucket"] = bucket
        for name, value in found.items():
            here = f"{value!r} in the server URL {shown!r}"
            if name in source and merged[name] != value:
                raise ValueError(
                    f"{name}: {here} disagrees with {source[name]}; they name different "
                    f"stores (two elections that could both elect a leader): make them agree")
            merged[name] = value
            source.setdefault(name, here)
    return stripped, merged


# -- PostgreSQL -----------------------------------------------------------------

DEFAULT_TABLE = "noleader_leases"

#: Lower-case SQL identifiers only, so that the quoted name means what the bare one does.
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_]*")
#: PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1).
MAX_IDENTIFIER = 63
#: The sequence is named ``<table>_revision``; it must fit in an identifier too.
SEQUENCE_SUFFIX = "_revision"
MAX_TABLE_NAME = MAX_IDENTIFIER - len(SEQUENCE_SUFFIX)

_TABLE_RULE = (
    "a table name is a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most "
    f"{MAX_TABLE_NAME} characters), optionally after a schema name and a dot "
    "(myschema.leases)"
)


def check_table_name(table: object) -> tuple[str | None, str]:
    """Return ``(schema, table)`` for a valid *table* name, else raise.

    Raises:
        TypeError: if *table* is not a str.
        ValueError: if it breaks the identifier rule.
    """
    if not isinstance(table, str):
        raise type_error("table", table, "a str")
    schema, dot, name = table.rpartition(".")
    parts = [schema, name] if dot else [name]
    for part in parts:
        if not _IDENTIFIER_RE.fullmatch(part) or len(part) > MAX_IDENTIFIER:
            raise ValueError(f"invalid table name {table!r:.80}: {_TABLE_RULE}")
    if len(name) > MAX_TABLE_NAME:
        raise ValueError(f"table name {table!r:.80} is too long: {_TABLE_RULE}")
    return (schema if dot else None), name


def _userinfo_and_hosts(netloc: str) -> tuple[str, str]:
    # Hosts never contain "@": the last one ends the credentials.
    userinfo, at, hosts = netloc.rpartition("@")
    return (userinfo if at else ""), hosts


def parse_postgres_url(url: str) -> tuple[str, str]:
    """Split ``postgresql://...?table=name`` into ``(dsn for asyncpg, table)``.

    Checks the form only, no I/O: the scheme, the ports, no fragment.

    Raises:
        ValueError: for a malformed URL (the message never shows a password).
    """
    shown = dsn_address(url)
    scheme, sep, _ = url.partition("://")
    if not sep or SCHEMES.get(scheme.lower()) != "postgres":
        raise ValueError(
            f"not a PostgreSQL URL: {shown!r:.200} (expected "
            "postgresql://user:password@host:port/database)")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"malformed PostgreSQL URL {shown!r:.200}: {exc}") from None
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"PostgreSQL URL {shown!r:.200}: a fragment (#...) means nothing here")
    _, hosts = _userinfo_and_hosts(parts.netloc)
    for host in hosts.split(","):
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if colon and name and not port.isdigit():
            raise ValueError(f"PostgreSQL URL {shown!r:.200}: bad port {port!r} in {host!r}")
        if colon and port.isdigit() and not 0 < int(port) < 65536:
            raise ValueError(f"PostgreSQL URL {shown!r:.200}: port {port} out of range")
    table = DEFAULT_TABLE
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "table":
            try:
                check_table_name(value)
            except ValueError as exc:
                raise ValueError(f"PostgreSQL URL {shown!r:.200}: {exc}") from None
            table = value
        else:
            query.append((name, value))
    if len(query) == len(parse_qsl(parts.query, keep_blank_values=True)):
        return url, table
    dsn = parts._replace(query=urlencode(query)).geturl()
    return dsn, table


def _parts(dsn: str) -> tuple[str, str, str, str, str] | None:
    """``(scheme, userinfo, hosts, database, query)`` of a URL-form DSN, else None."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return None
    head, _, query = rest.partition("?")
    userinfo, hosts = _userinfo_and_hosts(head.partition("#")[0])
    hosts, slash, database = hosts.partition("/")
    return scheme, userinfo, hosts, (database if slash else ""), query.partition("#")[0]


def dsn_address(dsn: str) -> str:
    """*dsn* as it may be shown: no password, no query string. Never raises."""
    parts = _parts(dsn)
    if parts is None:
        return "<a PostgreSQL DSN>"
    scheme, userinfo, hosts, database, _ = parts
    user = userinfo.partition(":")[0]
    return f"{scheme}://{f'{user}@' if user else ''}{hosts}/{database}"


def dsn_secrets(dsn: str, options: Mapping[str, Any]) -> list[str]:
    """Passwords in *dsn* and *options*, to scrub from error messages."""
    found = [value for name in ("password", "sslpassword")
             if isinstance(value := options.get(name), str) and value]
    parts = _parts(dsn)
    if parts is not None:
        _, userinfo, _, _, query = parts
        _, colon, password = userinfo.partition(":")
        if colon and password:
            found += [password, unquote(password)]
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in ("password", "sslpassword") and value:
                found.append(value)
    return sorted(set(found), key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """*text* with every known secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
