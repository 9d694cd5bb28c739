"""Every store key and channel name knowctl uses, in one place.

All names start with ``knowctl:`` so a shared Redis can be inspected or cleaned by prefix.
Keys that one Lua script touches together share a Redis Cluster hash tag (the part in
``{...}``), and nothing else does: one model's quota windows share ``{q:<model>}``, one
user's limits share ``{u:<user>}`` (``{p:<cred>}``, ``{a:<address>}`` for the other kinds
of caller), one cache entry has ``{c:<digest>}``. A single global tag would put the whole
gateway on one Cluster slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

PREFIX = "knowctl:"

# Scope kinds: the first part of a scope string, and so of its hash tag. Each kind of caller
# has its own (gateway key users, pass-through credentials, anonymous addresses): a key user
# named "127.0.0.7" or "cred-..." never shares windows with that address or credential.
QUOTA = "q"
USER = "u"
PASSTHROUGH = "p"
ANONYMOUS = "a"
CACHE = "c"


def _tag_safe(text: str) -> str:
    # A '{' or '}' inside a tag would end it early (Redis hashes up to the first '}'), so
    # percent-encode them, and '%' itself to keep the encoding reversible and collision-free.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


# Between a model and the deployment that serves it, in a quota scope: model names never
# hold a '/' (knowctl.policy.paths), so the model part, and with it the hash tag, is exact.
LANE = "/"


def quota_scope(model: str, deployment: str | None = None) -> str:
    """Scope of one model's provider quota windows (RPM, TPM, RPD, TPD): the pool of one, or
    ``deployment`` of a pool of upstreams. Every deployment of a model shares the model's hash
    tag, so one script can admit a call on whichever has room."""
    if not model:
        raise ValueError("model must not be empty")
    if deployment is None:
        return f"{QUOTA}:{model}"
    if not deployment or LANE in model:
        raise ValueError(f"bad quota lane {model!r} / {deployment!r}")
    return f"{QUOTA}:{model}{LANE}{deployment}"


def user_scope(user: str) -> str:
    """Scope of one gateway key user's per-user limits (``owner:session`` included)."""
    if not user:
        raise ValueError("user must not be empty")
    return f"{USER}:{user}"


def passthrough_scope(name: str) -> str:
    """Scope of one verified pass-through credential's per-user limits (its ``cred-`` name)."""
    if not name:
        raise ValueError("credential name must not be empty")
    return f"{PASSTHROUGH}:{name}"


def anonymous_scope(address: str) -> str:
    """Scope of one client address's per-user limits as an anonymous caller (and as a
    pass-through credential not yet seen to succeed)."""
    if not address:
        raise ValueError("address must not be empty")
    return f"{ANONYMOUS}:{address}"


_CALLER_SCOPES = {"key": user_scope, "passthrough": passthrough_scope, "anonymous": anonymous_scope}


def caller_scope(kind: str, name: str) -> str:
    """Scope of the per-user limits of a caller of identity ``kind`` (see
    knowctl.policy.identity) named ``name``."""
    scope = _CALLER_SCOPES.get(kind)
    if scope is None:
        raise ValueError(f"callers of kind {kind!r} have no per-user limits")
    return scope(name)


@functools.lru_cache(maxsize=4096)  # checked on every pool admission
def scope_tag(scope: str) -> str:
    """The hash tag, braces included, that every key of ``scope`` carries (a quota lane's is
    its model's)."""
    if not scope:
        raise ValueError("scope must not be empty")
    if scope.startswith(f"{QUOTA}:"):
        scope = scope.split(LANE, 1)[0]
    return "{" + _tag_safe(scope) + "}"


def scope_part(scope: str) -> str:
    """What names ``scope`` in its keys: the tag, then a quota lane's deployment."""
    tag = scope_tag(scope)
    if scope.startswith(f"{QUOTA}:") and LANE in scope:
        return f"{tag}:d:{_tag_safe(scope.split(LANE, 1)[1])}"
    return tag


@dataclass(frozen=True, slots=True)
class WindowKeys:
    """The four keys of one window's exact log (see knowctl/store/lua/_lib.lua)."""

    log: str  # ZSET reservation id -> recording time (server microseconds)
    amounts: str  # HASH reservation id -> amount
    total: str  # STRING running sum of the amounts in the log
    claims: str  # HASH daemon id -> "units:server microseconds" held for an outage

    def as_list(self) -> list[str]:
        return [self.log, self.amounts, self.total, self.claims]


@functools.lru_cache(maxsize=4096)  # a caller's or a model's scope recurs on every call
def window_keys(scope: str, window_name: str) -> WindowKeys:
    base = f"{PREFIX}{scope_part(scope)}:w:{window_name}"
    return WindowKeys(log=f"{base}:log", amounts=f"{base}:amt", total=f"{base}:sum", claims=f"{base}:clm")


def cache_entry(digest: str) -> str:
    """A cached answer; tagged per entry so entries spread over the Cluster."""
    if not digest:
        raise ValueError("digest must not be empty")
    return f"{PREFIX}{{{CACHE}:{_tag_safe(digest)}}}:v"


def channel(name: str) -> str:
    """A pub/sub channel (e.g. ``channel("capacity")``). Channels are not keys: no tag."""
    if not name:
        raise ValueError("channel name must not be empty")
    return f"{PREFIX}ch:{name}"


def hash_tag(key: str) -> str | None:
    """The part Redis Cluster hashes (between the first '{' and the next '}'), if any."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or '{}': Redis hashes the whole key
        return None
    return key[start + 1 : end]


def check(name: str) -> str:
    """Refuse a key or channel not built here, so every name stays under the prefix."""
    if not isinstance(name, str) or not name.startswith(PREFIX) or name == PREFIX:
        raise ValueError(f"store keys and channels must be built by knowctl.store.keys: {name!r}")
    return name


# --- provider quota (owner: knowctl/daemon/quota/provider.py) ----------------------------------------


def quota_hold(lane: str) -> str:
    """Present while the provider's own quota for ``lane`` ran dry (an upstream 429): a
    model (the pool of one), or ``model/deployment`` (one deployment of a pool).

    The value is the epoch second the hold ends; the key's TTL ends it in the store too.
    Tagged like the model's windows, so a later script may read it with them.
    """
    model, _, deployment = lane.partition(LANE)
    return f"{PREFIX}{scope_part(quota_scope(model, deployment or None))}:hold"


def quota_learned(lane: str) -> str:
    """The capacity learned for ``lane`` (model/deployment) that declares no limit: the limit
    and whether it still probes, so a daemon that starts later begins where the fleet is."""
    model, _, deployment = lane.partition(LANE)
    return f"{PREFIX}{scope_part(quota_scope(model, deployment or None))}:learned"


def quota_waiting(model: str) -> str:
    """Present while some daemon has callers queued for ``model``'s quota: only then is
    returned capacity announced (see Store.adjust). Tagged like the model's windows, since
    the adjustment script reads it with them."""
    return f"{PREFIX}{scope_tag(quota_scope(model))}:waiting"


def quota_channel() -> str:
    """Where daemons announce quota news: capacity returned, a model held after a 429."""
    return channel("quota")


# --- records (owner: callers) ---------------------------------------------------------------
# Gateway keys: two hashes under one tag, so a future script may update both atomically. All
# key records on one Cluster slot is fine: it is a small admin dataset read on cache misses
# only (each daemon caches lookups), not a per-request hot spot.
KEYS_TAG = "{keys}"
IP = "i"


def key_records() -> str:
    """HASH key id -> JSON record (user, tier, max_priority, trusted, created, revoked)."""
    return f"{PREFIX}{KEYS_TAG}:records"


def key_lookup() -> str:
    """HASH SHA-256 hex of a gateway key -> its key id. Plain keys are never stored."""
    return f"{PREFIX}{KEYS_TAG}:lookup"


def keys_channel() -> str:
    """Where daemons announce key changes (created, revoked) so caches drop stale entries."""
    return channel("keys")


def ip_scope(address: str) -> str:
    """Scope of one client address's per-IP limits (apart from the anonymous scope of the
    same address: per-IP limits count every caller from it, keys and credentials too)."""
    if not address:
        raise ValueError("address must not be empty")
    return f"{IP}:{address}"


# --- cache (owner: cache) ---------------------------------------------------------------------
# An entry's key is its readable cache key (``topic:{t}:{hash}``, ``gen:{model}:{hash}``) as
# the hash tag, so entries spread over the Cluster and an invalidation glob maps onto store
# keys one to one. Cache keys never contain '{', '}' or '%' (knowctl.policy.cachekey).
TOPICS_TAG = "{topics}"


def cache_entries_match(pattern: str) -> str:
    """The store glob matching the entries (with their stale copies) of a cache-key glob."""
    return cache_entry(pattern)


def cache_key_of(entry: str) -> str | None:
    """The cache key of an entry key from :func:`cache_entry`, else None."""
    head, tail = f"{PREFIX}{{{CACHE}:", "}:v"
    if entry.startswith(head) and entry.endswith(tail):
        return entry[len(head) : -len(tail)]
    return None


def cache_lease(cache_key: str) -> str:
    """Held by the one daemon calling upstream for ``cache_key`` (cross-daemon coalescing);
    tagged with its entry."""
    return f"{PREFIX}{{{CACHE}:{_tag_safe(cache_key)}}}:lease"


def cache_watch(cache_key: str) -> str:
    """Present while another daemon waits for the holder of ``cache_key``'s lease: only then
    does the holder announce how it ended. Tagged with its entry and lease."""
    return f"{PREFIX}{{{CACHE}:{_tag_safe(cache_key)}}}:watch"


def cache_channel() -> str:
    """Cache news between daemons: coalesced answers, invalidations."""
    return channel("cache")


def topic_tally(bucket: int) -> str:
    """Topic request counts of one time bucket (a tally: topic -> requests)."""
    return f"{PREFIX}{TOPICS_TAG}:hits:{bucket}"


def topic_refresh_lease(slot: int) -> str:
    """Taken by the one daemon that runs the popular-topic refresh of interval ``slot``."""
    return f"{PREFIX}{TOPICS_TAG}:refresh:{slot}"


# --- resources callers create ------------------------------------------------------------------
# One record per interaction created through the gateway: its owner and the tokens its
# conversation holds so far. Each is alone in its slot (its own tag).


def interaction(interaction_id: str) -> str:
    return f"{PREFIX}ix:{{{_tag_safe(interaction_id)}}}"


def embedding(item_key: str) -> str:
    """One text's embedding (knowctl.policy.embeddings.item_key); alone in its slot."""
    if not item_key:
        raise ValueError("item key must not be empty")
    return f"{PREFIX}{{e:{_tag_safe(item_key)}}}"


# Who owns each file (and, later, cache or batch) created through the gateway, and the
# deployment that holds it; and each resumable upload in progress. Each alone in its slot.


def resource(name: str) -> str:
    """The owner record of a resource by its API name ("files/abc")."""
    if not name:
        raise ValueError("resource name must not be empty")
    return f"{PREFIX}r:{{{_tag_safe(name)}}}"


def upload_session(upload_id: str) -> str:
    """A resumable upload the gateway handed out: its owner and where its chunks go."""
    if not upload_id:
        raise ValueError("upload id must not be empty")
    return f"{PREFIX}up:{{{_tag_safe(upload_id)}}}"


def upload_scope(owner: str) -> str:
    """Scope of one caller's upload byte window (its owner name, as resources record it)."""
    if not owner:
        raise ValueError("owner must not be empty")
    return f"ub:{owner}"
