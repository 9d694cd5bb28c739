"""Optional CDN purge hook, in the shape of Cloudflare's purge-by-URL API:
``POST {cdn_purge_url}/zones/{zone}/purge_cache`` with ``{"files": [urls]}`` and a Bearer
token. Called when topic content is invalidated or regenerated; every failure is logged and
swallowed (the CDN then serves its copy until its own max-age runs out).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import quote

import aiohttp

from knowctl.daemon import cache_metrics as cm
from knowctl.settings import Settings

log = logging.getLogger("knowctl.cdn")

BATCH = 30  # Cloudflare accepts at most 30 URLs per purge-by-URL call
TIMEOUT_S = 10.0


class CdnPurger:
    def __init__(self, settings: Settings) -> None:
        token = settings.cdn_api_token.get_secret_value() if settings.cdn_api_token else None
        self._token = token
        self._base = (settings.public_base_url or "").rstrip("/")
        self._endpoint = (
            f"{settings.cdn_purge_url.rstrip('/')}/zones/{quote(settings.cdn_zone_id, safe='')}/purge_cache"
            if settings.cdn_purge_url and settings.cdn_zone_id
            else None
        )
        self.enabled = bool(self._endpoint and token and self._base)
        self._session: aiohttp.ClientSession | None = None

    def topic_urls(self, topics: Iterable[str]) -> list[str]:
        """The public URLs of these topics (names are validated: safe in a path)."""
        return [f"{self._base}/topics/{quote(t, safe='')}" for t in topics]

    async def purge_topics(self, topics: Iterable[str]) -> bool:
        return await self.purge(self.topic_urls(topics))

    async def purge(self, urls: list[str]) -> bool:
        """Purge ``urls``; True if every batch was accepted (or there was nothing to do)."""
        if not self.enabled or not urls:
            return True
        assert self._endpoint is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        ok = True
        headers = {"authorization": f"Bearer {self._token}", "content-type": "application/json"}
        for start in range(0, len(urls), BATCH):
            files = urls[start : start + BATCH]
            try:
                async with self._session.post(self._endpoint, json={"files": files}, headers=headers) as r:
                    if r.status >= 300:
                        ok = False
                        log.warning("cdn: purge of %d URL(s) refused with HTTP %d", len(files), r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok = False
                log.warning("cdn: purge of %d URL(s) failed: %s", len(files), type(exc).__name__)
        cm.CDN_PURGES.labels("ok" if ok else "failed").inc()
        return ok

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
