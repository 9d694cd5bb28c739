"""The gateway's own Google credentials, used upstream in place of the caller's.

Three cases, decided once at start-up from a ``CredentialsConfig``:

- an API key (``KNOWCTL_GOOGLE_API_KEY`` or its ``_FILE``): sent as ``x-goog-api-key`` to the
  Gemini API and to Vertex express, which both accept keys;
- OAuth (``KNOWCTL_GOOGLE_CREDENTIALS=adc`` or a service-account file): a bearer token for
  Vertex (and for the Gemini API when no key is set), refreshed off the event loop because
  google-auth refreshes with blocking HTTP;
- nothing: pass-through, the caller's own ``x-goog-api-key`` / ``Authorization`` go upstream.

The metadata server is never probed implicitly: google-auth is imported and asked for
credentials only when they are configured.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from knowctl.policy.paths import ApiCall, Family, Surface

_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Refresh this long before expiry, so a token never expires between check and use.
_REFRESH_MARGIN_S = 300.0


class CredentialsError(RuntimeError):
    """Configured credentials that cannot be loaded or refreshed."""


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """The gateway's own credentials as configured (knowctl.daemon.config.credentials_config)."""

    api_key: str | None = field(default=None, repr=False)  # KNOWCTL_GOOGLE_API_KEY
    google_credentials: str | None = None  # "adc" or a service-account file


class UpstreamCredentials:
    """Headers that authenticate one upstream call, or None for pass-through."""

    def __init__(self, api_key: str | None, oauth: Any | None) -> None:
        self._api_key = api_key
        self._oauth = oauth  # google.auth.credentials.Credentials
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config: CredentialsConfig) -> UpstreamCredentials:
        api_key = config.api_key
        oauth = _load_oauth(config.google_credentials) if config.google_credentials else None
        return cls(api_key, oauth)

    @property
    def mode(self) -> str:
        kinds = [k for k, v in (("api-key", self._api_key), ("oauth", self._oauth)) if v]
        return "+".join(kinds) if kinds else "passthrough"

    @property
    def holds_credentials(self) -> bool:
        return self._api_key is not None or self._oauth is not None

    def own_for(self, call: ApiCall) -> bool:
        """Whether ``call`` goes upstream with the gateway's own credentials (as
        ``headers_for`` decides), not the caller's."""
        return self._oauth is not None or (
            self._api_key is not None and call.family in (Family.GEMINI, Family.EXPRESS)
        )

    async def headers_for(self, call: ApiCall) -> dict[str, str] | None:
        """Auth headers for ``call``; None means: forward the caller's own credentials."""
        if self._api_key is not None and call.family in (Family.GEMINI, Family.EXPRESS):
            if call.surface is Surface.OPENAI:  # the OpenAI-compatible endpoint takes it as a bearer
                return {"authorization": f"Bearer {self._api_key}"}
            return {"x-goog-api-key": self._api_key}
        if self._oauth is None:
            return None
        token, quota_project = await self._fresh_token()
        headers = {"authorization": f"Bearer {token}"}
        if quota_project:
            headers["x-goog-user-project"] = quota_project
        return headers

    async def _fresh_token(self) -> tuple[str, str | None]:
        creds: Any = self._oauth
        if not _needs_refresh(creds):
            return creds.token, getattr(creds, "quota_project_id", None)
        async with self._lock:  # one refresh at a time; the others reuse its result
            if _needs_refresh(creds):
                await asyncio.to_thread(_refresh_blocking, creds)
        return creds.token, getattr(creds, "quota_project_id", None)


def _needs_refresh(creds: Any) -> bool:
    if not creds.token:
        return True
    expiry = getattr(creds, "expiry", None)
    if expiry is None:
        return False
    # google-auth keeps expiry as a naive datetime in UTC.
    remaining = expiry.replace(tzinfo=UTC).timestamp() - time.time()
    return bool(remaining < _REFRESH_MARGIN_S)


def _refresh_blocking(creds: Any) -> None:
    import google.auth.transport.requests

    try:
        creds.refresh(google.auth.transport.requests.Request())
    except Exception as exc:
        raise CredentialsError(f"cannot refresh Google credentials: {type(exc).__name__}") from exc


def _load_oauth(spec: str) -> Any:
    try:
        if spec == "adc":
            import google.auth

            creds, _project = google.auth.default(scopes=_SCOPES)
            return creds
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_file(spec, scopes=_SCOPES)  # type: ignore[no-untyped-call]
    except Exception as exc:
        # The message names the setting, never the secret's content.
        raise CredentialsError(
            f"KNOWCTL_GOOGLE_CREDENTIALS={spec!r} cannot be loaded: {type(exc).__name__}: {exc}"
        ) from exc
