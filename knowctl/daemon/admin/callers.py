"""Admin routes of the callers component: gateway keys and per-user usage.

POST /api/keys is the only answer that ever contains a key; everything else shows records.
"""

from __future__ import annotations

from typing import Any

from knowctl.daemon.admin.api import AdminError, AdminRequest, AdminResponse, Route
from knowctl.daemon.callers.registry import CallerRegistry
from knowctl.policy import callers as policy
from knowctl.policy.priority import Priority
from knowctl.store import StoreUnavailable

_CREATE_FIELDS = frozenset({"user", "tier", "max_priority", "trusted"})


def routes(registry: CallerRegistry) -> list[Route]:
    api = _KeysApi(registry)
    return [
        ("POST", "/api/keys", api.create),
        ("GET", "/api/keys", api.list),
        ("DELETE", "/api/keys/{key_id}", api.revoke),
        ("GET", "/api/users/{user}/usage", api.usage),
    ]


def _unavailable(exc: StoreUnavailable) -> AdminError:
    return AdminError(503, f"the key store is unavailable: {exc}")


class _KeysApi:
    def __init__(self, registry: CallerRegistry) -> None:
        self._registry = registry
        self._tiers = registry.config.tiers

    async def create(self, request: AdminRequest) -> AdminResponse:
        body = request.json_object()
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise AdminError(
                400, f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_CREATE_FIELDS))}"
            )
        try:
            user = policy.check_user(body.get("user"))
        except ValueError as exc:
            raise AdminError(400, f"user: {exc}") from None
        tier = self._tier(body.get("tier"))
        cap = self._cap(body.get("max_priority"), tier)
        trusted = body.get("trusted", False)
        if not isinstance(trusted, bool):
            raise AdminError(400, "trusted must be true or false")
        try:
            key, record = await self._registry.keys.create(user, tier, cap, trusted)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        return AdminResponse({**record.public(), "key": key}, status=201)

    def _tier(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value not in self._tiers:
            known = ", ".join(sorted(self._tiers)) or "none are configured"
            raise AdminError(400, f"unknown tier {value!r} (configured tiers: {known})")
        return value

    def _cap(self, value: Any, tier: str | None) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise AdminError(400, "max_priority must be a priority name")
        try:
            cap = Priority.parse(value)
        except ValueError as exc:
            raise AdminError(400, f"max_priority: {exc}") from None
        tier_cap = self._tiers[tier].max_priority if tier else None
        if tier_cap is not None and cap > Priority[tier_cap]:
            raise AdminError(400, f"max_priority {cap.name} is above tier {tier}'s cap {tier_cap}")
        return cap.name

    async def list(self, request: AdminRequest) -> AdminResponse:
        try:
            records = await self._registry.keys.records()
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        user = request.query.get("user")
        shown = [r.public() for r in records if user is None or r.user == user]
        return AdminResponse({"auth_mode": self._registry.mode, "keys": shown})

    async def revoke(self, request: AdminRequest) -> AdminResponse:
        key_id = request.params["key_id"]
        if not policy.is_key_id(key_id):
            raise AdminError(404, f"no key with id {key_id!r}")
        try:
            record = await self._registry.keys.revoke(key_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if record is None:
            raise AdminError(404, f"no key with id {key_id!r}")
        return AdminResponse(record.public())

    async def usage(self, request: AdminRequest) -> AdminResponse:
        """``?kind=key|passthrough|anonymous`` picks the namespace; without it the name's form
        does (an address, a ``cred-`` name, else a key's user)."""
        name = request.params["user"]
        try:
            kind, owner = policy.usage_subject(name, request.query.get("kind") or None)
        except ValueError as exc:
            raise AdminError(400, f"user: {exc}") from None
        tier = request.query.get("tier")
        if tier is not None:
            self._tier(tier)
        elif owner is not None:
            tier = await self._tier_of(owner)
        windows, degraded = await self._registry.usage(name, tier, kind)
        return AdminResponse(
            {"user": name, "kind": kind, "tier": tier, "windows": windows, "degraded": degraded}
        )

    async def _tier_of(self, owner: str) -> str | None:
        """The tier of the user's newest valid key (limits follow the key in use, so this is
        the best single answer); None when the store cannot say."""
        try:
            records = await self._registry.keys.records()
        except StoreUnavailable:
            return None
        live = [r for r in records if r.user == owner and r.revoked is None]
        return live[-1].tier if live else None
