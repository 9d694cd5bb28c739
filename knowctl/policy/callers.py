"""Who is calling, as pure functions: credentials in a request, the client address behind
trusted proxies, gateway keys and their hashes, user names, and the RateLimit header fields.

No I/O, no clock, no randomness: the daemon (``knowctl/daemon/callers/registry.py``) passes those in.
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
from urllib.parse import unquote_plus

import orjson

from knowctl.policy.identity import IdentityKind
from knowctl.policy.windows import Window

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Gateway keys carry a recognisable prefix so secret scanners and people can tell them from
# Google API keys (which start with "AIza") at a glance.
KEY_PREFIX = "kc_"
KEY_BYTES = 32
# Key ids are public handles (logs, `keys list`); 6 random bytes as 12 hex digits.
KEY_ID_BYTES = 6
_KEY_ID = re.compile(r"k[0-9a-f]{12}")  # every pattern here is used with fullmatch

# User names become store keys, log fields and URL path segments: a safe, bounded alphabet.
# ':' is reserved for the "owner:session" names of trusted backends, so the two kinds of
# name can never collide ('/' would not survive the admin API's path routing).
USER_MAX = 128
SUB_USER_SEPARATOR = ":"
# fullmatch, never match with "$": "$" also matches before a trailing newline ("alice\n").
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,127}")
# Pass-through callers are named by a hash of their credential (credential_identity).
CREDENTIAL_PREFIX = "cred-"
_CREDENTIAL_NAME = re.compile(r"cred-[0-9a-f]{32}")


# --- credentials -------------------------------------------------------------------------
# Every place Google's API front end takes a caller credential from (the system parameters,
# https://cloud.google.com/apis/docs/system-parameters): API keys as ``x-goog-api-key`` or
# ``?key=`` / ``?$key=``; OAuth tokens as ``Authorization`` or ``?access_token=`` (older
# pages also name ``oauth_token``; some discovery documents ``bearer_token``); IAM's
# ``x-goog-iam-authorization-token``. Query names count after percent-decoding, with any
# leading ``$`` and in any case: recognising too much only narrows a cache scope, while
# missing one would let a credentialed call pass as anonymous.
CREDENTIAL_HEADERS = ("x-goog-api-key", "authorization", "x-goog-iam-authorization-token")
CREDENTIAL_PARAMS = frozenset({"key", "access_token", "oauth_token", "bearer_token"})
# Also the caller's, never the gateway's business when it calls with its own credentials:
# browser state (cookies, the signed-in account selector), which project is billed, and the
# parameters Google reserves so that passwords never sit in URLs.
CALLER_STATE_HEADERS = frozenset(
    {
        "cookie",
        "cookie2",
        "proxy-authorization",
        "x-goog-authuser",
        "x-goog-iam-authority-selector",
        "x-goog-user-project",
    }
)
CALLER_STATE_PARAMS = frozenset({"userproject", "passwd", "password"})
STRIPPED_HEADERS = frozenset(CREDENTIAL_HEADERS) | CALLER_STATE_HEADERS
STRIPPED_PARAMS = CREDENTIAL_PARAMS | CALLER_STATE_PARAMS
# Query parameters split on '&' and on ';' (which some servers also take): what a server may
# read as a parameter of its own is recognised here too.
_QUERY_SEPARATORS = re.compile(r"[&;]")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def param_name(raw: str) -> str:
    """A query parameter's name as a credential check compares it: percent-decoded (``+`` a
    space), without leading ``$`` (Google's ``$key`` is ``key``), trimmed, lower case."""
    return unquote_plus(raw, errors="replace").strip().lstrip("$").lower()


def query_credentials(query: str) -> list[tuple[str, str]]:
    """Every (name, decoded value) of ``query`` in a credential parameter, in order; empty
    values are no credential."""
    if not query:
        return []
    found = []
    for part in _QUERY_SEPARATORS.split(query):
        raw_name, _, raw_value = part.partition("=")
        name = param_name(raw_name)
        if name in CREDENTIAL_PARAMS:
            value = unquote_plus(raw_value, errors="replace").strip()
            if value:
                found.append((name, value))
    return found


def presented_credential(header: Mapping[str, str], query: str) -> str | None:
    """The gateway key a caller sent, from the first place the SDKs put one:
    ``x-goog-api-key`` (Gemini API key mode), ``Authorization: Bearer`` (Vertex, OAuth), then
    the query (``?key=`` in REST examples, or another credential parameter; the last one)."""
    api_key = header.get("x-goog-api-key", "").strip()
    if api_key:
        return api_key
    token = bearer_token(header.get("authorization"))
    if token is not None:
        return token
    in_query = query_credentials(query)
    return in_query[-1][1] if in_query else None


def presented_credentials(headers: Sequence[tuple[str, str]], query: str) -> list[tuple[str, str]]:
    """Every credential of a pass-through call as (where, value), wherever Google would read
    one: each credential header (repeats included: the request goes upstream as it came) and
    each credential parameter. A Bearer token is its token, any other ``Authorization`` its
    whole value: the gateway does not judge what Google may accept."""
    found = []
    for name, value in headers:
        if name in CREDENTIAL_HEADERS:
            value = value.strip()
            if name == "authorization":
                value = bearer_token(value) or value
            if value:
                found.append((name, value))
    return found + query_credentials(query)


def without_credentials(headers: Sequence[tuple[str, str]], query: str) -> tuple[list[tuple[str, str]], str]:
    """The request's headers and query minus every place a caller credential can be, and
    minus the caller's browser state and billing choices (for a call the gateway makes with
    its own credentials). Parameters kept stay exactly as they were encoded."""
    kept = [(k, v) for k, v in headers if k not in STRIPPED_HEADERS]
    if query:
        parts = _QUERY_SEPARATORS.split(query)
        kept_parts = [p for p in parts if param_name(p.partition("=")[0]) not in STRIPPED_PARAMS]
        if len(kept_parts) != len(parts):
            query = "&".join(kept_parts)
    return kept, query


def digest(secret: str) -> str:
    """SHA-256 hex of a secret: how gateway keys are stored and credentials are named.

    A plain hash, not a slow KDF: gateway keys are 32 random bytes (256 bits), so no
    dictionary or brute-force attack on a leaked hash is possible and stretching would only
    cost time on every cache miss. Google API keys and OAuth tokens are likewise random.
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def credential_identity(credentials: str | Sequence[tuple[str, str]]) -> str:
    """The user name of a pass-through caller: a hash of their own Google credential.

    128 bits of the hash: unique in practice, and the credential cannot be recovered from it.
    A call that carries several credentials is named by all of them (where each was, and its
    value), so a credential that never worked alone cannot borrow the name of one that did.
    """
    if isinstance(credentials, str):
        material = credentials
    elif len(credentials) == 1:
        material = credentials[0][1]  # one credential: the same name whichever place it came in
    else:
        material = orjson.dumps(sorted(credentials)).decode()
    return CREDENTIAL_PREFIX + digest(material)[:32]


def is_credential_identity(name: str) -> bool:
    """Whether ``name`` has the form of :func:`credential_identity`'s names."""
    return bool(_CREDENTIAL_NAME.fullmatch(name))


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
    return bool(_KEY_ID.fullmatch(text))


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
    if not isinstance(name, str) or not _USER.fullmatch(name):
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
    """A name as ``users usage`` takes it: a key's user, ``owner:session``, a client address
    (anonymous callers) or a pass-through ``cred-`` name. Returns the owner whose keys decide
    the tier (the name itself for callers without keys)."""
    _, owner = usage_subject(name)
    return owner if owner is not None else name


def usage_subject(name: str, kind: str | None = None) -> tuple[IdentityKind, str | None]:
    """Whose windows ``users usage NAME`` reads: (identity kind, the owner whose keys decide
    the tier, None for callers without keys). Each kind counts in its own store namespace,
    so a key's user named like an address is another caller than that address. Without
    ``kind``, the name's form decides: an address is anonymous, ``cred-<32 hex>`` a
    pass-through credential, anything else a key's user (``kind="key"`` reads a key user
    whose name looks like one of the others)."""
    if kind is None:
        kind = "anonymous" if _is_address(name) else "passthrough" if is_credential_identity(name) else "key"
    if kind == "anonymous":
        if not _is_address(name):
            raise ValueError("an anonymous caller is named by its client address (203.0.113.7, 2001:db8::1)")
        return "anonymous", None
    if kind == "passthrough":
        if not is_credential_identity(name):
            raise ValueError(
                "a pass-through caller is named cred-<32 hex digits>, as the access log shows it"
            )
        return "passthrough", None
    if kind == "key":
        owner, sep, session = name.partition(SUB_USER_SEPARATOR)
        check_user(owner)
        if sep:
            check_user(session)
        return "key", owner
    raise ValueError(f"unknown caller kind {kind!r}: use key, passthrough or anonymous")


def _is_address(name: str) -> bool:
    """An address in its canonical text (what the gateway names anonymous callers by)."""
    address = parse_address(name)
    return address is not None and str(address) == name


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
