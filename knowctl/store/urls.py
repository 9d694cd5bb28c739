"""Store URLs taken apart, without importing redis-py (settings validate URLs with this).

- ``memory://``
- ``redis://[user:password@]host[:port][/db]`` and ``rediss://`` (TLS): one server
- ``redis+cluster://[user:password@]host:port[,host:port...]/``: Redis Cluster; the hosts
  are start-up nodes, the client discovers the rest (``rediss+cluster://`` for TLS)
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the master of
  ``service`` as the Sentinels at those addresses report it, followed through failovers.
  The userinfo authenticates to Redis; ``?sentinel_password=`` (and ``sentinel_username=``)
  to the Sentinels themselves, when they require it (``rediss+sentinel://`` for TLS to Redis)
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from knowctl.redact import ENCODE_HINT, check_authority

SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_PARAMS = frozenset({"sentinel_password", "sentinel_username"})


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


@dataclass(frozen=True, slots=True)
class MultiHostURL:
    """A ``redis+cluster://`` or ``redis+sentinel://`` URL, parsed."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool
    service: str | None = None  # sentinel only
    db: int = 0
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:
        host, port_text = item, ""
    # The messages name no text of the URL: a mistyped password can end up in the host list.
    if not host:
        raise ValueError(f"an empty host in the host list ({ENCODE_HINT})")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a bad port in the host list (1-65535; {ENCODE_HINT})")
    return host, int(port_text)


def parse_multi_host(url: str) -> MultiHostURL:
    """Parse a cluster or sentinel URL; ValueError says what is wrong (never echoing a password)."""
    scheme = scheme_of(url)
    if scheme not in ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"):
        raise ValueError(f"not a cluster or sentinel URL: scheme {scheme!r}")
    sentinel = scheme.endswith("+sentinel")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hostpart = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hostpart:
        raise ValueError(f"{scheme}:// needs at least one host:port")
    default_port = DEFAULT_SENTINEL_PORT if sentinel else DEFAULT_PORT
    hosts = tuple(_host_port(item.strip(), default_port) for item in hostpart.split(","))
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - (_SENTINEL_PARAMS if sentinel else set())
    if unknown:
        raise ValueError(f"{scheme}:// takes no query parameter {', '.join(sorted(unknown))}")
    segments = [unquote(s) for s in path.split("/") if s]
    if not sentinel:
        if segments:
            # Redis Cluster has only database 0.
            raise ValueError("redis+cluster:// takes no database or path: end the URL with '/'")
        return MultiHostURL(scheme, hosts, username, password, tls=scheme.startswith("rediss"))
    if not segments or len(segments) > 2:
        raise ValueError("redis+sentinel:// needs the service name as its path: .../service_name[/db]")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ValueError("the database number after the service name must be an integer")
        db = int(segments[1])
    return MultiHostURL(
        scheme,
        hosts,
        username,
        password,
        tls=scheme.startswith("rediss"),
        service=segments[0],
        db=db,
        sentinel_username=params.get("sentinel_username") or None,
        sentinel_password=params.get("sentinel_password") or None,
    )


def check_store_url(url: str) -> str:
    """``url`` if it names a supported backend and parses; else ValueError."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise ValueError(
            "must be memory://, redis://host:port/db, rediss://..., "
            "redis+cluster://host:port[,host:port...]/ or redis+sentinel://host:port[,...]/service[/db]"
        )
    if scheme == "memory":
        if "@" in url:  # describe() shows a memory URL as it is
            raise ValueError("memory:// takes no user name or password")
        memory_max_bytes(url)
        return url
    # Before any parsing: a password that spills past the host part could not be redacted.
    check_authority(url, single_host="+" not in scheme)
    if "+" in scheme:
        parse_multi_host(url)
    return url


DEFAULT_MEMORY_MAX_BYTES = 64 * 1024 * 1024


def memory_max_bytes(url: str) -> int:
    """How many bytes of plain values a ``memory://`` store keeps (``?max_bytes=N``)."""
    raw = dict(parse_qsl(urlsplit(url).query)).get("max_bytes")
    if raw is None:
        return DEFAULT_MEMORY_MAX_BYTES
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"memory:// max_bytes must be a positive integer, got {raw!r}")
    return int(raw)
