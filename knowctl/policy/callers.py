"""Who is calling, as pure functions: credentials in a request, the client address behind
trusted proxies, gateway keys and their hashes, user names, and the RateLimit header fields.

No I/O, no clock, no randomness: the daemon (``knowctl/daemon/callers.py``) passes those in.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from knowctl.policy.windows import Window

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Gateway keys carry a recognisable prefix so secret scanners and people can tell them from
# Google API keys (which start with "AIza") at a glance.
KEY_PREFIX = "kc_"
KEY_BYTES = 32
# Key ids are public handles (logs, `keys list`); 6 random bytes as 12 hex digits.
KEY_ID_BYTES = 6
_KEY_ID = re.compile(r"^k[0-9a-f]{12}$")

# User names become store keys, log fields and URL path segments: a safe, bounded alphabet.
# ':' is reserved for the "owner:session" names of trusted backends, so the two kinds of
# name can never collide ('/' would not survive the admin API's path routing).
USER_MAX = 128
SUB_USER_SEPARATOR = ":"
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,127}$")
_CREDENTIAL_HEADERS = ("x-goog-api-key", "authorization")


# --- credentials -------------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def query_key(query: str) -> str | None:
    """The last ``key=`` parameter of a query string, if any (the Gemini API's ``?key=``)."""
    if "key=" not in query:
        return None
    found = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "key" and value:
            found = value
    return found


def presented_credential(header: Mapping[str, str], query: str) -> str | None:
    """The credential a caller sent where the SDKs put one: ``x-goog-api-key`` (Gemini API
    key mode), ``Authorization: Bearer`` (Vertex, OAuth), or ``?key=`` (REST examples)."""
    api_key = header.get("x-goog-api-key", "").strip()
    if api_key:
        return api_key
    return bearer_token(header.get("authorization")) or query_key(query)


def without_credentials(headers: Sequence[tuple[str, str]], query: str) -> tuple[list[tuple[str, str]], str]:
    """The request's headers and query minus every place a caller credential can be."""
    kept = [(k, v) for k, v in headers if k not in _CREDENTIAL_HEADERS]
    if "key=" in query:
        query = urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "key"])
    return kept, query


def digest(secret: str) -> str:
    """SHA-256 hex of a secret: how gateway keys are stored and credentials are named.

    A plain hash, not a slow KDF: gateway keys are 32 random bytes (256 bits), so no
    dictionary or brute-force attack on a leaked hash is possible and stretching would only
    cost time on every cache miss. Google API keys and OAuth tokens are likewise random.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def credential_identity(credential: str) -> str:
    """The user name of a pass-through caller: a hash of their own Google credential.

    128 bits of the hash: unique in practice, and the credential cannot be recovered from it.
    """
    return "cred-" + digest(credential)[:32]


def make_key(secret: bytes) -> str:
    """A gateway key from ``KEY_BYTES`` random bytes (URL-safe, no padding)."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"a gateway key needs {KEY_BYTES} random bytes")
    return KEY_PREFIX + base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")


def make_key_id(random: bytes) -> str:
    if len(random) != KEY_ID_BYTES:
        raise ValueError(f"a key id needs {KEY_ID_BYTES} random bytes")
    return "k" + random.hex()


def is_key_id(text: str) -> bool:
    return bool(_KEY_ID.match(text))


# --- key records -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store keeps about one gateway key (never the key itself)."""

    key_id: str
    user: str
    tier: str | None = None
    max_priority: str | None = None  # a Priority name; None: the tier's cap, else none
    trusted: bool = False  # may name its own users in X-Knowctl-User
    created: float = 0.0  # epoch seconds
    revoked: float | None = None  # epoch seconds, None while valid

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRecord:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a key record must be a JSON object")
        return cls(
            key_id=str(data["key_id"]),
            user=str(data["user"]),
            tier=_optional_str(data.get("tier")),
            max_priority=_optional_str(data.get("max_priority")),
            trusted=bool(data.get("trusted", False)),
            created=float(data.get("created") or 0.0),
            revoked=None if data.get("revoked") is None else float(data["revoked"]),
        )

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it: times as ISO 8601 UTC."""
        return {
            "key_id": self.key_id,
            "user": self.user,
            "tier": self.tier,
            "max_priority": self.max_priority,
            "trusted": self.trusted,
            "created": iso_time(self.created),
            "revoked": iso_time(self.revoked) if self.revoked is not None else None,
        }


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- user names --------------------------------------------------------------------------


def check_user(name: object) -> str:
    """A valid user name, or a ValueError saying what is allowed."""
    if not isinstance(name, str) or not _USER.match(name):
        raise ValueError(
            f"user names are 1-{USER_MAX} characters: letters, digits and _ . @ + = - "
            "(starting with a letter or digit)"
        )
    return name


def sub_user(owner: str, session: str) -> str:
    """The user a trusted backend's ``X-Knowctl-User`` names, kept under the key's own user
    so one backend's users can never count against (or read) another's."""
    return f"{owner}{SUB_USER_SEPARATOR}{check_user(session.strip())}"


def check_usage_name(name: str) -> str:
    """A name as ``users usage`` takes it: a key's user, ``owner:session``, or a client
    address (anonymous callers). Returns the owner whose keys decide the tier."""
    if parse_address(name) is not None and name == str(parse_address(name)):
        return name
    owner, sep, session = name.partition(SUB_USER_SEPARATOR)
    check_user(owner)
    if sep:
        check_user(session)
    return owner


# --- client address ----------------------------------------------------------------------


def parse_networks(spec: str) -> tuple[IpNetwork, ...]:
    """``10.0.0.0/8, 192.168.1.7`` as networks (a bare address is a /32 or /128)."""
    return tuple(
        ipaddress.ip_network(item, strict=False) for item in (p.strip() for p in spec.split(",")) if item
    )


def parse_address(text: str) -> IpAddress | None:
    """An address from a forwarding header entry: bare, ``v4:port``, ``[v6]`` or ``[v6]:port``."""
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:  # IPv4 with a port (a bare IPv6 address has several colons)
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket is the same client as plain IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: IpAddress, trusted: Iterable[IpNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IpNetwork]) -> str:
    """The client's address: the direct peer, unless the peer is a trusted proxy; then the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy.

    Right-most, because every proxy appends what it saw and only our own proxies' entries can
    be believed: anything to the left of the first untrusted hop may be made up by the client.
    An entry that is not an address ends the walk at the last trusted hop, never further left.
    """
    peer_address = parse_address(peer)
    if peer_address is None or not trusted or not is_trusted(peer_address, trusted):
        return str(peer_address) if peer_address is not None else peer
    entries = [item for value in forwarded_for for item in value.split(",") if item.strip()]
    current = peer_address
    for entry in reversed(entries):
        address = parse_address(entry)
        if address is None:
            return str(current)
        if not is_trusted(address, trusted):
            return str(address)
        current = address
    return str(current)


# --- RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-08 and later) -------------


@functools.lru_cache(maxsize=256)  # policy names come from the settings: a handful, on every call
def _sf_string(text: str) -> str:
    """An RFC 8941 structured-field String (policy names are quoted strings in the draft)."""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in text):
        raise ValueError(f"policy name {text!r} must be printable ASCII")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seconds(value: float) -> int:
    """Whole seconds, rounded up (a client that waits this long is never early)."""
    if not math.isfinite(value):
        raise ValueError("seconds must be finite")
    return max(0, math.ceil(value - 1e-9))


def rate_limit_policy(policies: Sequence[tuple[str, Window]]) -> str:
    """``RateLimit-Policy``: ``"minute";q=10;w=60, "hour";q=100;w=3600`` (quota, window)."""
    return ", ".join(f"{_sf_string(name)};q={w.limit};w={_seconds(w.length_s)}" for name, w in policies)


def rate_limit(states: Sequence[tuple[str, int, float]]) -> str:
    """``RateLimit``: ``"minute";r=7;t=42`` per policy: (name, remaining units, seconds until
    the quota next frees up). Remaining is never negative."""
    return ", ".join(f"{_sf_string(name)};r={max(0, r)};t={_seconds(t)}" for name, r, t in states)
